"""``fedmkt models list|path``: the builtin models and where their checkpoints are."""

from __future__ import annotations

import typer

app = typer.Typer(help="Builtin models (tiny random ones and packaged pretrained ones).",
                  no_args_is_help=True)


@app.command("list")
def list_models() -> None:
    """List the builtin models and whether their checkpoint is built already."""
    from fedmkt.models.registry import BUILTIN_MODELS, builtin_model_path, is_complete

    width = max(map(len, BUILTIN_MODELS))
    for name, model in BUILTIN_MODELS.items():
        state = "ready" if is_complete(builtin_model_path(name, build=False)) else (
            "built on first use")
        typer.echo(f"{name:{width}s} {model.kind:10s} tokenizer={model.tokenizer:8s} "
                   f"{model.description}  [{state}]")


@app.command("path")
def model_path(
    name: str = typer.Argument(..., help="a builtin model name (see `fedmkt models list`)"),
    build: bool = typer.Option(True, help="build the checkpoint if it is not there yet"),
) -> None:
    """Print the checkpoint folder of a builtin model (building it on first use)."""
    from fedmkt.models.gguf_files import GgufPackageMissing
    from fedmkt.models.registry import ModelNotFoundError, builtin_model_path

    try:
        typer.echo(str(builtin_model_path(name, build=build)))
    except (ModelNotFoundError, GgufPackageMissing) as exc:
        typer.echo(f"error: {exc.args[0] if exc.args else exc}", err=True)
        raise typer.Exit(code=2) from None
