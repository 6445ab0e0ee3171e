"""``fedmkt serve <service>``: one entry for every service (one container image runs any)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Run one fedmkt service in the foreground.", no_args_is_help=True)

CONFIG = typer.Option(None, "--config", help="YAML settings file (env and flags override it)")


@app.command("aligner")
def aligner(
    config: Path | None = CONFIG,
    host: str | None = typer.Option(None, help="listen address [env FEDMKT_ALIGNER_HOST]"),
    grpc_port: int | None = typer.Option(
        None, help="gRPC port, 0 = free [env FEDMKT_ALIGNER_GRPC_PORT; default 50051]"),
    http_port: int | None = typer.Option(
        None, help="HTTP/JSON port, 0 = free, -1 = off [env FEDMKT_ALIGNER_HTTP_PORT; "
                   "default 8080]"),
    state_dir: Path | None = typer.Option(
        None, help="registered tokenizers and vocab-map cache [env FEDMKT_ALIGNER_STATE_DIR; "
                   "default $FEDMKT_HOME/aligner]"),
) -> None:
    """The token-alignment service: gRPC AlignerService + HTTP/JSON API."""
    from services.aligner.main import serve
    from services.settings import AlignerSettings, SettingsError, load_settings

    try:
        settings = load_settings(AlignerSettings, config, host=host, grpc_port=grpc_port,
                                 http_port=http_port, state_dir=state_dir)
    except SettingsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    serve(settings)
