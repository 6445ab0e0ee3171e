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


def _participant(role: str, config: Path | None, host: str | None, grpc_port: int | None,
                 metrics_port: int | None, state_dir: Path | None,
                 federation: Path | None = None, name: str | None = None) -> None:
    from services.participant.main import load_participant, serve
    from services.settings import SettingsError

    if federation is not None:
        config = _config_from_federation(federation, name, role, state_dir)
    if config is None:
        typer.echo(f"error: fedmkt serve {role} needs --config FILE (the participant's YAML) "
                   "or --federation FILE --name NAME", err=True)
        raise typer.Exit(2)
    try:
        settings, participant = load_participant(
            config, role=role,
            service_flags={"host": host, "grpc_port": grpc_port, "metrics_port": metrics_port,
                           "state_dir": state_dir})
    except (SettingsError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    serve(settings, participant)


def _config_from_federation(federation: Path, name: str | None, role: str,
                            state_dir: Path | None) -> Path:
    """Write participant ``name``'s YAML, derived from a federation config, to a temp file."""
    import tempfile

    import yaml

    from fedmkt.config import FederationConfigError, load_federation_config
    from fedmkt.federation.participants import participant_config

    if not name:
        typer.echo("error: --federation needs --name (a participant of that config)", err=True)
        raise typer.Exit(2)
    try:
        fed = load_federation_config(federation)
    except FederationConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    names = [p.name for p in fed.participants]
    if name not in names:
        typer.echo(f"error: no participant {name!r} in {federation}; participants: "
                   f"{', '.join(names)}", err=True)
        raise typer.Exit(2)
    values = participant_config(fed, name, state_dir)
    if values.get("role") != role:
        typer.echo(f"error: participant {name!r} has role {values.get('role')!r}, not {role!r}",
                   err=True)
        raise typer.Exit(2)
    fd, path = tempfile.mkstemp(prefix=f"fedmkt-{name}-", suffix=".yaml")
    with open(fd, "w") as fh:
        yaml.safe_dump({k: (str(v) if isinstance(v, Path) else v) for k, v in values.items()},
                       fh, sort_keys=False)
    return Path(path)


FEDERATION = typer.Option(
    None, "--federation", help="a federation config (examples/); with --name, serve that "
                               "participant (instead of --config)")
NAME = typer.Option(None, "--name", help="the participant's name in --federation")
PARTICIPANT_CONFIG = typer.Option(
    None, "--config", help="participant YAML: model, data, training (+ optional service keys)")
PARTICIPANT_HOST = typer.Option(None, help="listen address [env FEDMKT_PARTICIPANT_HOST]")
PARTICIPANT_PORT = typer.Option(
    None, help="gRPC port, 0 = free [env FEDMKT_PARTICIPANT_GRPC_PORT; default 0]")
PARTICIPANT_METRICS = typer.Option(
    None, help="Prometheus port, 0/-1 = off [env FEDMKT_PARTICIPANT_METRICS_PORT; default off]")
PARTICIPANT_STATE = typer.Option(
    None, help="adapters and staged knowledge [env FEDMKT_PARTICIPANT_STATE_DIR; default "
               "$FEDMKT_HOME/participants/<name>]")


@app.command("server")
def server(
    config: Path | None = PARTICIPANT_CONFIG,
    host: str | None = PARTICIPANT_HOST,
    grpc_port: int | None = PARTICIPANT_PORT,
    metrics_port: int | None = PARTICIPANT_METRICS,
    state_dir: Path | None = PARTICIPANT_STATE,
    federation: Path | None = FEDERATION,
    name: str | None = NAME,
) -> None:
    """The server LLM participant (gRPC ParticipantService, role server)."""
    _participant("server", config, host, grpc_port, metrics_port, state_dir, federation, name)


@app.command("client")
def client(
    config: Path | None = PARTICIPANT_CONFIG,
    host: str | None = PARTICIPANT_HOST,
    grpc_port: int | None = PARTICIPANT_PORT,
    metrics_port: int | None = PARTICIPANT_METRICS,
    state_dir: Path | None = PARTICIPANT_STATE,
    federation: Path | None = FEDERATION,
    name: str | None = NAME,
) -> None:
    """A client SLM participant (gRPC ParticipantService, role client)."""
    _participant("client", config, host, grpc_port, metrics_port, state_dir, federation, name)


@app.command("controller")
def controller(
    config: Path | None = CONFIG,
    host: str | None = typer.Option(None, help="listen address [env FEDMKT_CONTROLLER_HOST]"),
    grpc_port: int | None = typer.Option(
        None, help="gRPC port, 0 = free [env FEDMKT_CONTROLLER_GRPC_PORT; default 50050]"),
    state_dir: Path | None = typer.Option(
        None, help="run store (controller.db) [env FEDMKT_CONTROLLER_STATE_DIR; default "
                   "$FEDMKT_HOME/controller]"),
    resume: bool | None = typer.Option(
        None, "--resume/--no-resume",
        help="resume interrupted runs at start [env FEDMKT_CONTROLLER_RESUME; default on]"),
) -> None:
    """The round controller: gRPC ControllerService (runs, events, resume)."""
    from services.controller.main import serve
    from services.settings import ControllerSettings, SettingsError, load_settings

    try:
        settings = load_settings(ControllerSettings, config, host=host, grpc_port=grpc_port,
                                 state_dir=state_dir, resume=resume)
    except SettingsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    serve(settings)
