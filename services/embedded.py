"""``fedmkt run CONFIG``: the whole federation on one machine, each service its own process.

The embedded run starts, on free loopback ports, the aligner (``fedmkt serve aligner``), the
controller (``fedmkt serve controller``) and one participant process per entry of the config
(``fedmkt serve server|client --config <generated participant config>``), waits for each
``READY`` line and ``grpc.health.v1`` SERVING, starts the run through the ControllerService,
renders its events live, fetches the adapters, then runs the **baseline** (knowledge transfer
off) on fresh participant processes with their own state directories, and on those processes the
**ablation** (the baseline with the clients also trained on the public data by CE: the data
FedMKT distils on, without the knowledge) and, for a homogeneous federation with ``fedavg``, the
**FedAvg** baseline (the clients' adapters averaged after local training), and writes
``runs/<run>/``: ``report.md``, ``metrics.json``, ``metrics.png``, ``adapters/``, ``logs/``,
``events.jsonl`` and the state of every service. The code paths are those of a docker-compose
or Kubernetes deployment; only the process manager differs.

Processes are stopped cleanly on success, failure and Ctrl-C/SIGTERM: each child leads its own
process group, gets SIGTERM, then SIGKILL after a grace period; on Linux the children also get
SIGTERM should this process die without cleaning up (``setpriv --pdeathsig``), so no orphans.
Running ``fedmkt run CONFIG --run-id <existing run>`` restarts the services on the same state
directories and the controller resumes the run from its last completed step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedmkt.config import FederationConfig, load_federation_config
from fedmkt.federation.events import Event
from fedmkt.federation.participants import participant_config
from fedmkt.federation.report import RunOutcome, summarize, write_report
from fedmkt.federation.threads import thread_env, thread_plan
from fedmkt.federation.view import RunView
from fedmkt.wire.v1 import controller_pb2, controller_pb2_grpc
from services.run_adapters import fetch_final_adapters

log = logging.getLogger("fedmkt.embedded")

READY_TIMEOUT = 900.0  # first use builds builtin models (GGUF conversion takes minutes)
HEALTH_TIMEOUT = 60.0
STOP_GRACE = 10.0
HOST = "127.0.0.1"


class EmbeddedRunError(RuntimeError):
    """The embedded run could not finish; the message says why in one line."""


# --------------------------------------------------------------------------- processes


def _pdeathsig_prefix() -> list[str]:
    """``setpriv --pdeathsig SIGTERM --`` where available (Linux util-linux), else nothing."""
    setpriv = shutil.which("setpriv")
    if sys.platform.startswith("linux") and setpriv:
        return [setpriv, "--pdeathsig", "SIGTERM", "--"]
    return []


class ServiceProcess:
    """One service process: started in its own process group, its output in a log file, its
    ``READY <name> key=value ...`` line parsed into ``ports``."""

    def __init__(self, name: str, argv: list[str], log_path: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **(self.env or {}), "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            _pdeathsig_prefix() + self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env, start_new_session=True, text=True, bufsize=1)
        self._reader = threading.Thread(target=self._read, name=f"log-{self.name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        with open(self.log_path, "a", encoding="utf-8") as out:
            for line in self.process.stdout:
                out.write(line)
                out.flush()
                if line.startswith("READY ") and not self._ready.is_set():
                    self.ports = _parse_ready(line)
                    self._ready.set()

    def wait_ready(self, timeout: float) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.2):
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise EmbeddedRunError(
                    f"{self.name} exited (code {code}) before it was ready; last log lines:\n"
                    f"{self.tail()}")
            if time.monotonic() > deadline:
                raise EmbeddedRunError(f"{self.name} was not ready after {timeout:.0f} s; see "
                                       f"{self.log_path}")
        return self.ports

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM to the process group, SIGKILL after ``grace`` seconds; reaps the process."""
        if self.process is None:
            return
        pgid = self.process.pid  # start_new_session: the child leads its own group
        _signal_group(pgid, signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s; killing it", self.name, grace)
            _signal_group(pgid, signal.SIGKILL)
            self.process.wait(10)
        _signal_group(pgid, signal.SIGKILL)  # anything the service left in its group
        if self._reader is not None:
            self._reader.join(5)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _parse_ready(line: str) -> dict[str, int]:
    ports = {}
    for token in line.split()[2:]:
        key, _, value = token.partition("=")
        with contextlib.suppress(ValueError):
            ports[key] = int(value)
    return ports


class ServiceSet:
    """The processes of one embedded run; ``stop_all`` stops them in reverse start order."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.services: list[ServiceProcess] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              log_name: str | None = None) -> ServiceProcess:
        service = ServiceProcess(name, argv, self.logs / f"{log_name or name}.log", env)
        service.start()
        self.services.append(service)
        return service

    def stop(self, services: list[ServiceProcess], grace: float = STOP_GRACE) -> None:
        threads = [threading.Thread(target=s.stop, args=(grace,)) for s in services]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.services = [s for s in self.services if s not in services]

    def stop_all(self, grace: float = STOP_GRACE) -> None:
        self.stop(list(reversed(self.services)), grace)


def wait_healthy(endpoint: str, service: str, timeout: float = HEALTH_TIMEOUT) -> None:
    """Poll ``grpc.health.v1`` until ``service`` is SERVING."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(endpoint) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                if status.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise EmbeddedRunError(f"{service} at {endpoint} is not SERVING after "
                                       f"{timeout:.0f} s")
            time.sleep(0.2)


# --------------------------------------------------------------------------- the run


@dataclass
class Deployment:
    """Where the services of one (FedMKT or baseline) run listen."""

    aligner: str
    controller: str
    participants: dict[str, str] = field(default_factory=dict)
    processes: list[ServiceProcess] = field(default_factory=list)


def new_run_id(config: FederationConfig) -> str:
    return f"{config.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


class EmbeddedRun:
    """One ``fedmkt run``: services up, FedMKT run, baseline run, report, services down."""

    def __init__(self, config_path: Path, *, runs_dir: Path = Path("runs"),
                 run_id: str | None = None, baselines: bool = True, view: bool = True,
                 command: list[str] | None = None, ready_timeout: float = READY_TIMEOUT,
                 health_timeout: float = HEALTH_TIMEOUT, stop_grace: float = STOP_GRACE) -> None:
        self.config_path = Path(config_path)
        self.config = load_federation_config(self.config_path)
        self.run_id = run_id or new_run_id(self.config)
        self.run_dir = Path(runs_dir) / self.run_id
        self.baselines = baselines
        self.view = view
        # How to run `fedmkt` (tests substitute a fake service program).
        self.command = command or [sys.executable, "-m", "fedmkt"]
        self.ready_timeout = ready_timeout
        self.health_timeout = health_timeout
        self.stop_grace = stop_grace
        self.services = ServiceSet(self.run_dir / "logs")
        self.status: dict[str, Any] = {}

    # -- status file (read by `fedmkt runs` / `fedmkt watch`) ---------------------------
    def _status(self, **values: Any) -> None:
        self.status.update(values)
        _write_json(self.run_dir / "run.json", self.status)

    # -- entry --------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run everything; returns the summary (also written to ``metrics.json``)."""
        resumed = (self.run_dir / "run.json").exists()
        stored = self.run_dir / "config.yaml"
        if stored.exists():  # before any service starts; the stored config is never replaced
            self.check_resumable(stored)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not stored.exists():
            shutil.copyfile(self.config_path, stored)
        self._status(run_id=self.run_id, config=self.config.name, state="starting",
                     rounds=self.config.rounds, started_at=time.time(), pid=os.getpid(),
                     resumed=resumed)
        started = time.perf_counter()
        fedmkt = baseline = ablation = fedavg = None
        adapters: dict[str, dict[str, Any]] = {}
        startup = 0.0
        try:
            with _terminate_on_sigterm():
                t0 = time.perf_counter()
                deployment = self._deploy(self.run_dir / "fedmkt", with_core=True)
                startup = time.perf_counter() - t0
                fedmkt = self._execute(deployment, self.config, self.run_id, "fedmkt")
                if fedmkt.state == "succeeded":
                    adapters = fetch_final_adapters(deployment.participants, None,
                                                    self.run_id, self.run_dir)
                self.services.stop(deployment.processes, self.stop_grace)
                if self.baselines and fedmkt.state == "succeeded":
                    t1 = time.perf_counter()
                    base_dep = self._deploy(self.run_dir / "baseline", with_core=False,
                                            core=deployment)
                    startup += time.perf_counter() - t1
                    baseline = self._execute(base_dep, self.baseline_config(),
                                             f"{self.run_id}-baseline", "baseline")
                    if baseline.state == "succeeded":
                        # the ablation on the same processes (another run id: its own state)
                        ablation = self._execute(base_dep, self.ablation_config(),
                                                 f"{self.run_id}-ablation", "ablation")
                    if baseline.state == "succeeded" and self.config.fedavg:
                        fedavg = self._execute(base_dep, self.fedavg_config(),
                                               f"{self.run_id}-fedavg", "fedavg")
                    self.services.stop(base_dep.processes, self.stop_grace)
        except KeyboardInterrupt:
            self._status(state="interrupted", finished_at=time.time())
            raise
        except BaseException as exc:
            self._status(state="failed", error=str(exc), finished_at=time.time())
            raise
        finally:
            self.services.stop_all(self.stop_grace)
        summary = summarize(
            self.config,
            fedmkt or RunOutcome(self.run_id, "failed", "did not start"),
            baseline, startup_seconds=startup,
            total_seconds=time.perf_counter() - started, adapters=adapters, ablation=ablation,
            fedavg=fedavg)
        paths = write_report(self.run_dir, summary)
        self._status(state=fedmkt.state if fedmkt else "failed",
                     baseline_state=baseline.state if baseline else None,
                     ablation_state=ablation.state if ablation else None,
                     fedavg_state=fedavg.state if fedavg else None,
                     finished_at=time.time(), report=str(paths["report"]))
        return summary

    def check_resumable(self, stored: Path) -> None:
        """An existing run folder resumes only with the same federation (the fields a resume
        may change aside): else one line naming what differs."""
        from fedmkt.config import FederationConfigError, parse_federation_config
        from fedmkt.federation.manager import (
            OPERATIONAL_FIELDS,
            describe_differences,
            federation_differences,
        )

        try:
            data = yaml.safe_load(stored.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                data.pop("tls", None)  # may change; its relative paths are not the run folder's
            before = parse_federation_config(data, source=str(stored))
        except (OSError, yaml.YAMLError, FederationConfigError) as exc:
            raise EmbeddedRunError(f"run {self.run_id}: its stored config {stored} does not "
                                   f"load ({exc})") from None
        if federation_differences(before, self.config):
            raise EmbeddedRunError(
                f"run {self.run_id} exists with another federation config: "
                f"{describe_differences(before, self.config)} ({stored} vs {self.config_path}); "
                f"resume it with the same config (only {', '.join(sorted(OPERATIONAL_FIELDS))} "
                "may change) or choose another --run-id")

    def baseline_config(self) -> FederationConfig:
        """No knowledge transfer: clients on their private data only, the LLM on the public
        data only (CE)."""
        return self.config.model_copy(update={
            "name": f"{self.config.name}-baseline"[:63], "transfer": False, "zero_shot": False,
            "fedavg": False})

    def ablation_config(self) -> FederationConfig:
        """The baseline plus the clients' CE on the public data: FedMKT's data without its
        knowledge (the LLM's part is its baseline's, reused from the memo)."""
        return self.baseline_config().model_copy(update={
            "name": f"{self.config.name}-ablation"[:63], "client_public_ce": True})

    def fedavg_config(self) -> FederationConfig:
        """Homogeneous federations with ``fedavg``: the baseline with the clients' adapters
        averaged after their local training (FedAvg without the LLM's knowledge)."""
        return self.baseline_config().model_copy(update={
            "name": f"{self.config.name}-fedavg"[:63], "fedavg": True})

    # -- services -----------------------------------------------------------------------
    def _fedmkt(self, *args: str) -> list[str]:
        return [*self.command, *args]

    def _deploy(self, folder: Path, *, with_core: bool,
                core: Deployment | None = None) -> Deployment:
        """Start (aligner and controller if ``with_core``) + one process per participant."""
        started: list[tuple[ServiceProcess, str]] = []
        if with_core:
            aligner = self.services.start("aligner", self._fedmkt(
                "serve", "aligner", "--host", HOST, "--grpc-port", "0", "--http-port", "-1"))
            controller = self.services.start("controller", self._fedmkt(
                "serve", "controller", "--host", HOST, "--grpc-port", "0", "--no-resume",
                "--state-dir", str(self.run_dir / "controller")))  # we resume, new endpoints
            started += [(aligner, "fedmkt.v1.AlignerService"),
                        (controller, "fedmkt.v1.ControllerService")]
        participants = []
        kind = folder.name
        threads = thread_plan(self.config)
        for spec in self.config.participants:
            values = participant_config(self.config, spec.name, folder / "state" / spec.name)
            # One memo per participant for the FedMKT run and its baseline: a step that is the
            # same computation in both (same start adapter, data, seed) runs once.
            values["memo_dir"] = str(self.run_dir / "memo" / spec.name)
            path = folder / "participants" / f"{spec.name}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(values, sort_keys=False))
            env = thread_env(threads[spec.name])
            process = self.services.start(
                spec.name, self._fedmkt("serve", spec.role, "--config", str(path), "--host", HOST,
                                        "--grpc-port", "0"),
                env=env, log_name=f"{kind}-{spec.name}")
            participants.append(process)
            started.append((process, "fedmkt.v1.ParticipantService"))
        for process, service in started:
            port = process.wait_ready(self.ready_timeout).get("grpc")
            if not port:
                raise EmbeddedRunError(f"{process.name} printed no grpc port in its READY line")
            wait_healthy(f"{HOST}:{port}", service, self.health_timeout)
        if with_core:
            deployment = Deployment(aligner=f"{HOST}:{started[0][0].ports['grpc']}",
                                    controller=f"{HOST}:{started[1][0].ports['grpc']}")
            self._status(controller=deployment.controller, aligner=deployment.aligner)
        else:
            assert core is not None
            deployment = Deployment(aligner=core.aligner, controller=core.controller)
        for spec, process in zip(self.config.participants, participants, strict=True):
            deployment.participants[spec.name] = f"{HOST}:{process.ports['grpc']}"
        deployment.processes = participants
        return deployment

    # -- one run through the controller ---------------------------------------------------
    def _execute(self, deployment: Deployment, config: FederationConfig, run_id: str,
                 kind: str) -> RunOutcome:
        wired = config.model_copy(update={
            "participants": [p.model_copy(update={"endpoint": deployment.participants[p.name]})
                             for p in config.participants],
            "aligner": config.aligner.model_copy(update={"endpoint": deployment.aligner}),
        })
        self._status(state=f"running {kind}", current_run=run_id)
        started = time.perf_counter()
        events: list[Event] = []
        with grpc.insecure_channel(deployment.controller) as channel:
            stub = controller_pb2_grpc.ControllerServiceStub(channel)
            stub.StartRun(controller_pb2.StartRunRequest(config_yaml=wired.to_yaml(),
                                                         run_id=run_id), timeout=60)
            title = f"{run_id} ({kind})"
            with RunView(title, participants=[p.name for p in config.participants],
                         live=None if self.view else False) as view, \
                    open(self.run_dir / "events.jsonl", "w" if kind == "fedmkt" else "a",
                         encoding="utf-8") as out:
                for event in _watch(stub, run_id):
                    events.append(event)
                    view.update(event)
                    out.write(json.dumps({"kind_of_run": kind, **event.to_json()}) + "\n")
            info = stub.GetRun(controller_pb2.GetRunRequest(run_id=run_id), timeout=30)
        from services.controller.grpc_service import STATE_NAMES

        return RunOutcome(run_id, STATE_NAMES.get(info.state, "failed"), info.error, events,
                          time.perf_counter() - started)


def _watch(stub: controller_pb2_grpc.ControllerServiceStub, run_id: str) -> Iterator[Event]:
    """The run's events, from the first, until it finishes."""
    from services.controller.grpc_service import event_from_pb

    try:
        for message in stub.WatchRun(controller_pb2.WatchRunRequest(run_id=run_id)):
            yield event_from_pb(message)
    except grpc.RpcError as exc:
        raise EmbeddedRunError(f"watching run {run_id} failed ({exc.code().name}): "
                               f"{exc.details()}") from exc


@contextlib.contextmanager
def _terminate_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt (main thread only) so the cleanup runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------- listing


def list_runs(runs_dir: Path) -> list[dict[str, Any]]:
    """``run.json`` of every run folder, newest first. A run whose status says it is still
    going but whose ``fedmkt run`` process is gone (killed, the machine rebooted) is shown, and
    its ``run.json`` rewritten, as ``interrupted``."""
    found = []
    for path in sorted(Path(runs_dir).glob("*/run.json")):
        try:
            status = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if _is_orphaned(status):
            status.update(state="interrupted",
                          error=status.get("error") or f"the fedmkt run process (pid "
                                                       f"{status.get('pid')}) is gone")
            with contextlib.suppress(OSError):
                _write_json(path, status)
        found.append(status)
    return sorted(found, key=lambda s: s.get("started_at") or 0, reverse=True)


def _is_orphaned(status: dict[str, Any]) -> bool:
    """The status is not final, but its process no longer runs."""
    state = str(status.get("state", ""))
    if not (state == "starting" or state.startswith("running")):
        return False
    pid = status.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return bool(fields) and fields[0] == "Z"
