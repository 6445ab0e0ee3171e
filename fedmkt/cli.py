"""The one command-line entry: ``fedmkt``. Sub-commands import their heavy modules lazily."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

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


RUNS_DIR = typer.Option(Path("runs"), "--runs-dir", help="where run folders are written")


@app.command("run")
def run(
    config: Path = typer.Argument(..., help="federation config (see examples/)"),
    runs_dir: Path = RUNS_DIR,
    run_id: str | None = typer.Option(
        None, "--run-id", help="name of the run folder; an existing run resumes where it stopped"),
    baselines: bool = typer.Option(
        True, "--baselines/--no-baselines",
        help="also run the baseline (no knowledge transfer) for the report's comparison"),
    ready_timeout: float = typer.Option(
        900.0, help="seconds each service may take to start (first use builds models)"),
) -> None:
    """Run a whole federation locally: every service its own process, then a report."""
    from fedmkt.config import FederationConfigError
    from services.embedded import EmbeddedRun, EmbeddedRunError

    try:
        embedded = EmbeddedRun(config, runs_dir=runs_dir, run_id=run_id, baselines=baselines,
                               ready_timeout=ready_timeout)
    except FederationConfigError as exc:
        _fail(str(exc))
    try:
        summary = embedded.run()
    except KeyboardInterrupt:
        import shlex

        again = ["fedmkt", "run", str(config), "--runs-dir", str(runs_dir), "--run-id",
                 embedded.run_id]
        typer.echo(f"interrupted; services stopped. Resume with: {shlex.join(again)}", err=True)
        raise typer.Exit(130) from None
    except EmbeddedRunError as exc:
        _fail(f"{exc} (logs in {embedded.run_dir / 'logs'})")
    typer.echo(f"report: {embedded.run_dir / 'report.md'}")
    if summary["state"] != "succeeded":
        _fail(f"run {summary['run_id']} {summary['state']}: {summary['error']}")
    for kind in ("baseline", "ablation", "fedavg"):
        if summary.get(f"{kind}_state") not in (None, "succeeded"):
            _fail(f"{kind} run {summary[f'{kind}_run_id']} {summary[f'{kind}_state']}: "
                  f"{summary[f'{kind}_error']} (the report lacks the {kind} numbers)")


@app.command("experiment")
def experiment(
    spec: Path = typer.Argument(..., help="experiment file (see experiments/)"),
    runs_dir: Path = typer.Option(Path("runs/experiments"), "--runs-dir",
                                  help="where the experiment's run folders are written"),
    out: Path = typer.Option(Path("docs/results.md"), "--out",
                             help="the results document written when every run has finished"),
    plan: bool = typer.Option(False, "--plan", help="only print the runs it would make"),
) -> None:
    """Run every federation of an experiment (studies x seeds; finished runs are not run again,
    an interrupted one resumes), then write the results document with pooled intervals."""
    import shlex
    import sys

    from fedmkt.federation.experiment import ExperimentError
    from services.embedded import EmbeddedRunError
    from services.experiment import dump_entries, run_experiment

    try:
        if plan:
            typer.echo(dump_entries(spec), nl=False)
            return
        command = "fedmkt experiment " + shlex.join(
            [str(spec), "--runs-dir", str(runs_dir), "--out", str(out)])
        written = run_experiment(spec, runs_dir, out, command=command,
                                 say=lambda text: typer.echo(text, err=True))
    except ExperimentError as exc:
        _fail(str(exc))
    except (EmbeddedRunError, RuntimeError) as exc:
        _fail(f"{exc}; run the same command again to resume")
    except KeyboardInterrupt:
        typer.echo(f"interrupted; resume with: {shlex.join(sys.argv)}", err=True)
        raise typer.Exit(130) from None
    typer.echo(f"results: {written}")


@app.command("runs")
def runs(runs_dir: Path = RUNS_DIR) -> None:
    """List past and running runs (newest first)."""
    from datetime import datetime

    from services.embedded import list_runs

    found = list_runs(runs_dir)
    if not found:
        typer.echo(f"no runs in {runs_dir}")
        return
    for status in found:
        started = status.get("started_at")
        when = datetime.fromtimestamp(started).strftime("%Y-%m-%d %H:%M") if started else "?"
        extra = f"  {status['report']}" if status.get("report") else ""
        typer.echo(f"{status.get('run_id', '?'):45s} {str(status.get('state', '?')):20s} "
                   f"{when}  rounds={status.get('rounds', '?')}{extra}")


@app.command("watch")
def watch(
    run_id: str = typer.Argument(..., help="a run id (see `fedmkt runs`)"),
    runs_dir: Path = RUNS_DIR,
    controller: str | None = typer.Option(
        None, "--controller", help="host:port of the controller (default: from the run folder)"),
    after: int = typer.Option(0, "--after", help="replay events after this sequence number"),
) -> None:
    """Attach to a run and show its progress live (WatchRun) until it ends."""
    import json

    import grpc

    from fedmkt.federation.view import RunView
    from fedmkt.wire.v1 import controller_pb2, controller_pb2_grpc
    from services.controller.grpc_service import event_from_pb

    status_file = runs_dir / run_id / "run.json"
    status = json.loads(status_file.read_text()) if status_file.exists() else {}
    endpoint = controller or status.get("controller")
    if not endpoint:
        _fail(f"no controller known for run {run_id}: give --controller host:port")
    remote = status.get("current_run") or run_id
    with grpc.insecure_channel(endpoint) as channel, RunView(remote) as view:
        stub = controller_pb2_grpc.ControllerServiceStub(channel)
        try:
            for message in stub.WatchRun(controller_pb2.WatchRunRequest(
                    run_id=remote, after_sequence=after)):
                view.update(event_from_pb(message))
        except grpc.RpcError as exc:
            state = status.get("state", "unknown")
            _fail(f"cannot watch {remote} at {endpoint}: {exc.details()} (run state: {state}"
                  + (f"; report: {status['report']}" if status.get("report") else "") + ")")


@app.command("submit")
def submit(
    config: Path = typer.Argument(..., help="federation config whose participants and aligner "
                                            "name their endpoints (host:port)"),
    controller: str = typer.Option(..., "--controller", help="host:port of a running controller"),
    run_id: str = typer.Option("", "--run-id", help="run id; an existing one resumes"),
    wait_seconds: float = typer.Option(
        300.0, help="how long to keep trying to reach the controller"),
    report_dir: Path | None = typer.Option(
        None, "--report-dir", help="also write <dir>/<run-id>/: events, report.md, metrics, "
                                   "adapters (as `fedmkt run` does)"),
) -> None:
    """Start a run on an already deployed federation (docker compose, Kubernetes) and watch it."""
    import time

    import grpc

    from fedmkt.config import FederationConfigError, load_federation_config
    from fedmkt.federation.view import RunView
    from fedmkt.wire.v1 import controller_pb2, controller_pb2_grpc
    from services.controller.grpc_service import STATE_NAMES, event_from_pb

    try:
        fed = load_federation_config(config)
    except FederationConfigError as exc:
        _fail(str(exc))
    missing = [p.name for p in fed.participants if not p.endpoint]
    if missing or not fed.aligner.endpoint:
        _fail(f"every participant and the aligner need an endpoint to submit; missing: "
              f"{', '.join(missing + ([] if fed.aligner.endpoint else ['aligner']))}")
    if report_dir is not None:
        from services.submit_report import ReportDirError, check_writable

        try:
            check_writable(report_dir)
        except ReportDirError as exc:
            _fail(str(exc))
    report = None
    with grpc.insecure_channel(controller) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=wait_seconds)
        except grpc.FutureTimeoutError:
            _fail(f"controller {controller} not reachable within {wait_seconds:.0f} s")
        stub = controller_pb2_grpc.ControllerServiceStub(channel)
        try:
            info = stub.StartRun(controller_pb2.StartRunRequest(config_yaml=fed.to_yaml(),
                                                                run_id=run_id), timeout=60)
        except grpc.RpcError as exc:
            _fail(f"StartRun: {exc.details()}")
        start = time.perf_counter()
        if report_dir is not None:
            from services.submit_report import SubmitReport

            report = SubmitReport(report_dir, info.run_id, fed)
        with RunView(info.run_id, participants=[p.name for p in fed.participants]) as view:
            for message in stub.WatchRun(controller_pb2.WatchRunRequest(run_id=info.run_id)):
                event = event_from_pb(message)
                view.update(event)
                if report is not None:
                    report.record(event)
        final = stub.GetRun(controller_pb2.GetRunRequest(run_id=info.run_id), timeout=30)
    state = STATE_NAMES.get(final.state, "failed")
    if report is not None:
        typer.echo(f"report: {report.finish(state, final.error)}")
    typer.echo(f"run {final.run_id}: {state} after {time.perf_counter() - start:.0f} s "
               f"({final.rounds_completed}/{final.rounds} rounds)")
    if state != "succeeded":
        _fail(final.error or state)


@app.command("export")
def export(
    out_dir: Path = typer.Argument(..., help="the checkpoint folder to write (must not exist "
                                             "unless --force)"),
    adapter: Path | None = typer.Option(
        None, "--adapter", help="a PEFT adapter folder (adapter_config.json + "
                                "adapter_model.safetensors), e.g. <state>/runs/<run id>/adapters/"
                                "round-0003"),
    run: str | None = typer.Option(
        None, "--run", help="instead of --adapter: a run id under --runs-dir, or a run folder, "
                            "of `fedmkt run`"),
    participant: str | None = typer.Option(
        None, "--participant", help="with --run: whose adapter (a participant name)"),
    round_index: int | None = typer.Option(
        None, "--round", min=0, help="with --run: which round (default: the newest saved, i.e. "
                                     "the final adapter of a finished run)"),
    baseline: bool = typer.Option(
        False, "--baseline", help="with --run: the adapter of the baseline run instead"),
    runs_dir: Path = RUNS_DIR,
    model: str | None = typer.Option(
        None, "--model", help="the base model: builtin name, checkpoint folder or hub id "
                              "(default: the one the adapter was trained on)"),
    dtype: str = typer.Option("float32", "--dtype",
                              help="dtype to load, merge and save in: float32, bfloat16, float16"),
    force: bool = typer.Option(False, "--force", help="replace an existing OUT_DIR"),
) -> None:
    """Merge a LoRA adapter into its base model and write a full Hugging Face checkpoint
    (config, safetensors weights, tokenizer) that AutoModelForCausalLM loads. See docs/export.md.

    fedmkt export OUT_DIR --adapter ADAPTER_DIR [--model NAME]

    fedmkt export OUT_DIR --run RUN_ID --participant NAME [--round N] [--baseline]
    """
    from fedmkt.errors import FedmktError
    from fedmkt.models.export import export_merged, export_run_adapter

    if (adapter is None) == (run is None):
        _fail("give either --adapter ADAPTER_DIR or --run RUN_ID --participant NAME")
    if run is not None and not participant:
        _fail("--run needs --participant NAME")
    if adapter is not None and (participant or round_index is not None or baseline):
        _fail("--participant, --round and --baseline go with --run, not with --adapter")
    try:
        if adapter is not None:
            result = export_merged(adapter, out_dir, model=model, dtype=dtype, force=force)
        else:
            result = export_run_adapter(run, participant, out_dir, round_index=round_index,
                                        runs_dir=runs_dir, baseline=baseline, model=model,
                                        dtype=dtype, force=force)
    except FedmktError as exc:
        _fail(str(exc))
    typer.echo(f"exported {result.adapter_dir} merged into {result.base_model} "
               f"({result.dtype}) to {result.out_dir}")


@app.command("health")
def health(
    endpoint: str = typer.Argument(..., help="host:port of any fedmkt gRPC service"),
    service: str = typer.Option("", help="a service name (default: the whole server)"),
    timeout: float = typer.Option(3.0, help="seconds to wait for the answer"),
) -> None:
    """Exit 0 if the service answers grpc.health.v1 SERVING (for container health checks)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(endpoint) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            _fail(f"{endpoint}: {exc.code().name}: {exc.details()}")
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    typer.echo(status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        raise typer.Exit(1)


@app.command("certs")
def certs(
    out_dir: Path = typer.Argument(..., help="folder for ca.pem and <name>.pem / <name>-key.pem"),
    services: str = typer.Option(
        "", "--services", help="comma-separated service names: aligner, controller, run (the "
        "run job), operator:<name>, and participant names"),
    federation: Path | None = typer.Option(
        None, "--federation", help="also: the aligner, controller, run and every participant of "
        "this federation config"),
    host: list[str] = typer.Option(
        [], "--host", help="one more DNS name or IP every certificate names (repeatable)"),
    days: int = typer.Option(30, help="days the CA and the certificates are valid"),
    force: bool = typer.Option(
        False, "--force", help="make a new CA and every certificate anew, overwriting"),
    readable_keys: bool = typer.Option(
        False, "--readable-keys", help="write the services' keys 0644 instead of 0600 (compose "
        "file secrets are mounted with the host file's mode; the services run as uid 10001)"),
) -> None:
    """A development CA and one key + certificate per service, for mTLS (see docs/security.md).

    Each certificate names its service in CN and in a URI SAN (fedmkt:controller,
    fedmkt:aligner, fedmkt:operator:run, fedmkt:participant:<name>), the identity the services
    check; DNS SANs: the service name and localhost, IPs 127.0.0.1 and ::1. Files already there
    and right are kept (missing services are added with the same CA); anything else is refused
    without --force.
    """
    try:
        from services.certs import CertsError, make_certs, names_from_federation
    except ImportError as exc:
        _fail(f"fedmkt certs needs the cryptography package ({exc}); pip install cryptography "
              "(requirements/test.txt has it), or use your own CA")
    names = [n.strip() for n in services.split(",") if n.strip()]
    try:
        if federation is not None:
            names = [*names, *(n for n in names_from_federation(federation) if n not in names)]
        result = make_certs(out_dir, names, days=days, hosts=tuple(host), force=force,
                            key_mode=0o644 if readable_keys else 0o600)
    except (CertsError, ValueError) as exc:
        _fail(str(exc))
    if result.new_ca:
        typer.echo(f"{out_dir}: new CA (ca.pem, ca-key.pem)")
    if result.created:
        typer.echo(f"{out_dir}: certificates for {', '.join(result.created)}")
    if result.kept:
        typer.echo(f"{out_dir}: kept (already there and valid): {', '.join(result.kept)}")
    if result.stale:
        typer.echo(f"warning: {', '.join(result.stale)} in {out_dir} are signed by the CA "
                   "replaced now; name them too, or remove them", err=True)


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
