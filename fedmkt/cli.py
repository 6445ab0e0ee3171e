"""The one command-line entry: ``fedmkt``. Sub-commands import their heavy modules lazily."""

from __future__ import annotations

import logging
import sys

import typer

app = typer.Typer(
    name="fedmkt",
    help="Federated mutual knowledge transfer between one server LLM and many client SLMs.",
    no_args_is_help=True,
    add_completion=False,
)

tokenizers_app = typer.Typer(help="Builtin offline tokenizers.", no_args_is_help=True)
app.add_typer(tokenizers_app, name="tokenizers")


@tokenizers_app.command("list")
def tokenizers_list() -> None:
    """List the builtin tokenizers and whether they are assembled already."""
    from fedmkt.models.tokenizers import BUILTIN_TOKENIZERS
    from fedmkt.paths import cache_dir

    root = cache_dir("tokenizers")
    for name, builtin in BUILTIN_TOKENIZERS.items():
        state = "ready" if (root / name / "tokenizer.json").exists() else "built on first use"
        typer.echo(f"{name:10s} {builtin.description}  [{builtin.package}; {state}]")


@tokenizers_app.command("path")
def tokenizers_path(name: str = typer.Argument(..., help="a builtin tokenizer name")) -> None:
    """Print the folder of a builtin tokenizer (assembling it on first use)."""
    from fedmkt.models.tokenizers import TokenizerNotFoundError, tokenizer_path

    try:
        typer.echo(str(tokenizer_path(name)))
    except TokenizerNotFoundError as exc:
        _fail(str(exc))


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _mount_optional() -> None:
    """Sub-command groups that live next to the code they drive."""
    import importlib

    for module, name in [
        ("fedmkt.align.cli", "align"),
        ("fedmkt.models.cli", "models"),
        ("services.cli", "serve"),
    ]:
        try:
            sub = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        app.add_typer(sub.app, name=name)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    _mount_optional()
    app(args=argv, prog_name="fedmkt")


if __name__ == "__main__":
    main()
