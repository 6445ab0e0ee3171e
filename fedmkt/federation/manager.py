"""The controller's runs: start, resume, cancel, watch, list — without any network code.

``RunManager`` owns the store and the event hub, and runs each run in its own thread with a
``RunExecutor``. ``connect(config)`` builds the ``Connections`` (participant and aligner
clients) of a run: gRPC clients in the controller service, in-process fakes in tests.

Starting a run whose id is already in the store resumes it from its last completed step if it
did not succeed (the config must describe the same federation; endpoints, deadlines, quorum,
TLS, the aligner and max_parallel may change), and returns it unchanged if it did.
``resume_interrupted()`` picks up every run that was running when the controller stopped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fedmkt.config import NAME_PATTERN, FederationConfig, parse_federation_config
from fedmkt.errors import FailedPrecondition, InvalidArgument, NotFound
from fedmkt.federation import events as ev
from fedmkt.federation.errors import CallFailed, RunCancelled, RunFailed
from fedmkt.federation.events import Event, EventHub
from fedmkt.federation.interfaces import CancelScope, Connections
from fedmkt.federation.plan import build_plan
from fedmkt.federation.rounds import RunExecutor
from fedmkt.federation.store import (
    CANCELLED,
    FAILED,
    FINAL_STATES,
    PENDING,
    RUNNING,
    SUCCEEDED,
    RunRecord,
    RunStore,
)

log = logging.getLogger("fedmkt.controller")

Connector = Callable[[FederationConfig], Connections]
# What a resumed run may change: how it is run, not what it computes. ``quorum`` only decides
# whether a round counts with the clients it has (a run that lost its quorum may be resumed
# with a smaller one); completed steps do not depend on it.
OPERATIONAL_FIELDS = {"deadlines", "tls", "aligner", "max_parallel", "quorum"}


@dataclass
class _Active:
    thread: threading.Thread
    scope: CancelScope
    user_cancelled: bool = False


class RunManager:
    def __init__(self, store: RunStore, connect: Connector, *, hub: EventHub | None = None,
                 validate: Callable[[FederationConfig], None] = lambda config: None) -> None:
        self.store = store
        self.hub = hub or EventHub(store)
        self.connect = connect
        self.validate = validate  # extra checks at StartRun (e.g. endpoints present)
        self._lock = threading.Lock()
        self._active: dict[str, _Active] = {}
        self._stopping = False

    # ------------------------------------------------------------------ API
    def start(self, config_yaml: str, run_id: str = "") -> RunRecord:
        """Start (or resume) a run of the federation described by ``config_yaml``."""
        config = parse_federation_config(config_yaml, source="config_yaml")
        self.validate(config)
        run_id = run_id or config.name
        if not NAME_PATTERN.match(run_id):
            raise InvalidArgument(
                f"run_id must be 1-63 letters, digits, '_', '.', '-', got {run_id!r}")
        with self._lock:
            if self._stopping:
                raise FailedPrecondition("the controller is shutting down")
            if run_id in self._active:
                return self._record(run_id)
            existing = self.store.get_run(run_id)
            if existing is None:
                kind = "fedmkt" if config.transfer else "baseline"
                self.store.create_run(run_id, config.to_yaml(), config.rounds, kind)
            elif existing.state == SUCCEEDED:
                return existing
            else:
                _check_same_federation(run_id, existing, config)
                self.store.update_run(run_id, config_yaml=config.to_yaml())  # new endpoints
            self._launch(run_id, config, resumed=existing is not None)
        return self._record(run_id)

    def get(self, run_id: str) -> RunRecord:
        return self._record(run_id)

    def list(self) -> list[RunRecord]:
        return self.store.list_runs()

    def cancel(self, run_id: str) -> RunRecord:
        with self._lock:
            active = self._active.get(run_id)
            if active is not None:
                active.user_cancelled = True
                active.scope.cancel("cancelled by request")
        record = self._record(run_id)
        if active is None and record.state in (PENDING, RUNNING):
            # Interrupted in an earlier controller and not resumed: mark it cancelled.
            self._finish(run_id, CANCELLED, "cancelled by request")
            record = self._record(run_id)
        return record

    def watch(self, run_id: str, after: int = 0, *,
              stop: Callable[[], bool] = lambda: False) -> Iterator[Event]:
        self._record(run_id)  # NotFound for an unknown run
        return self.hub.watch(run_id, after, stop=stop, is_final=lambda: self._is_final(run_id))

    def wait(self, run_id: str, timeout: float | None = None) -> RunRecord:
        """Block until the run's thread ends (tests and the embedded run)."""
        with self._lock:
            active = self._active.get(run_id)
        if active is not None:
            active.thread.join(timeout)
        return self._record(run_id)

    def resume_interrupted(self) -> list[str]:
        """Resume every run the store shows as pending/running but no thread runs."""
        resumed = []
        for record in self.store.list_runs():
            if record.state not in (PENDING, RUNNING):
                continue
            with self._lock:
                if record.run_id in self._active or self._stopping:
                    continue
                config = parse_federation_config(record.config_yaml, source=record.run_id)
                self._launch(record.run_id, config, resumed=True)
            resumed.append(record.run_id)
        return resumed

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop every active run; they stay 'running' in the store and resume on restart."""
        with self._lock:
            self._stopping = True
            active = list(self._active.values())
        for item in active:
            item.scope.cancel("the controller is shutting down")
        deadline = time.monotonic() + timeout
        for item in active:
            item.thread.join(max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------------ internals
    def _record(self, run_id: str) -> RunRecord:
        record = self.store.get_run(run_id)
        if record is None:
            raise NotFound(f"no run {run_id!r} (see ListRuns)")
        return record

    def _is_final(self, run_id: str) -> bool:
        record = self.store.get_run(run_id)
        return record is None or record.state in FINAL_STATES

    def _launch(self, run_id: str, config: FederationConfig, *, resumed: bool) -> None:
        """Start the run's thread (caller holds the lock)."""
        scope = CancelScope()
        self.store.update_run(run_id, state=RUNNING, error="", finished_at=0.0)
        thread = threading.Thread(target=self._run, args=(run_id, config, scope, resumed),
                                  name=f"run-{run_id}", daemon=True)
        self._active[run_id] = _Active(thread, scope)
        thread.start()

    def _run(self, run_id: str, config: FederationConfig, scope: CancelScope,
             resumed: bool) -> None:
        record = self._record(run_id)
        if not record.started_at:
            self.store.update_run(run_id, started_at=time.time())
        done = len(self.store.completed_steps(run_id))
        note = f"resumed after {done} completed steps" if resumed else "started"
        self.hub.publish(Event(run_id=run_id, kind=ev.RUN_STARTED, message=note,
                               total=config.rounds))
        state, error = SUCCEEDED, ""
        connections: Connections | None = None
        try:
            connections = self.connect(config)
            RunExecutor(run_id=run_id, config=config, plan=build_plan(config), store=self.store,
                        hub=self.hub, connections=connections, scope=scope).execute()
        except (RunCancelled, CallFailed) as exc:
            if scope.cancelled:
                state, error = CANCELLED, scope.reason or "cancelled"
            else:
                state, error = FAILED, str(exc)
        except RunFailed as exc:
            state, error = FAILED, str(exc)
        except Exception as exc:  # noqa: BLE001 - a bug must fail the run, not the controller
            log.exception("run %s failed", run_id)
            state, error = FAILED, f"internal error: {type(exc).__name__}: {exc}"
        finally:
            if connections is not None:
                connections.close()
        with self._lock:
            active = self._active.pop(run_id, None)
            interrupted = (self._stopping and state == CANCELLED
                           and not (active and active.user_cancelled))
        if interrupted:
            log.info("run %s interrupted by shutdown; it resumes when the controller restarts",
                     run_id)
            return
        self._finish(run_id, state, error)

    def _finish(self, run_id: str, state: str, error: str) -> None:
        if error:
            self.hub.publish(Event(run_id=run_id, kind=ev.ERROR, message=error))
        record = self._record(run_id)
        self.hub.publish(Event(run_id=run_id, kind=ev.RUN_FINISHED, message=state,
                               completed=record.rounds_completed, total=record.rounds))
        # The finished event is stored before the final state: watchers always receive it.
        self.store.update_run(run_id, state=state, error=error, finished_at=time.time(),
                              current_step="")
        log.info("run %s %s%s", run_id, state, f": {error}" if error else "")


def federation_differences(before: FederationConfig, after: FederationConfig) -> list[str]:
    """The fields (dotted paths, e.g. ``participants[1].model``) in which two configs describe
    different federations; the fields a resume may change (``OPERATIONAL_FIELDS``, endpoints)
    are not compared. Empty: the same federation."""

    def essence(c: FederationConfig) -> dict:
        data = c.model_dump(mode="json", exclude=OPERATIONAL_FIELDS)
        for participant in data["participants"]:
            participant.pop("endpoint", None)
        return data

    found: list[str] = []

    def walk(a: object, b: object, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b), key=str):
                walk(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for index, (x, y) in enumerate(zip(a, b, strict=True)):
                walk(x, y, f"{path}[{index}]")
        elif a != b:
            found.append(path)

    walk(essence(before), essence(after), "")
    return found


def describe_differences(before: FederationConfig, after: FederationConfig) -> str:
    """``name: old -> new`` for each differing field (at most 4, then how many more)."""
    import json

    old, new = before.model_dump(mode="json"), after.model_dump(mode="json")

    def value(data: object, path: str) -> str:
        for part in path.replace("]", "").replace("[", ".").split("."):
            if isinstance(data, dict):
                data = data.get(part)
            elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
                data = data[int(part)]
            else:
                return "?"
        text = json.dumps(data)
        return text if len(text) <= 40 else text[:37] + "..."

    paths = federation_differences(before, after)
    shown = [f"{p}: {value(old, p)} -> {value(new, p)}" for p in paths[:4]]
    if len(paths) > 4:
        shown.append(f"and {len(paths) - 4} more")
    return "; ".join(shown)


def _check_same_federation(run_id: str, existing: RunRecord, config: FederationConfig) -> None:
    before = parse_federation_config(existing.config_yaml, source=run_id)
    if federation_differences(before, config):
        raise FailedPrecondition(
            f"run {run_id!r} exists with a different federation config "
            f"({describe_differences(before, config)}); resume it with the same config (only "
            f"{', '.join(sorted(OPERATIONAL_FIELDS))} and endpoints may change) or start a new "
            "run with another run_id")
