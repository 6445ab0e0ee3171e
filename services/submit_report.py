"""What ``fedmkt submit --report-dir DIR`` writes: the report of a run on a deployed federation.

The compose ``run`` job and the Kubernetes Job submit the federation to the controller and follow
its events; with a report folder they also write ``DIR/<run-id>/`` as ``fedmkt run`` does:
``events.jsonl`` (live, one event a line), ``config.yaml``, then at the end ``adapters/`` (the
latest adapter of every participant as a PEFT folder, fetched over gRPC by
``services.run_adapters``), ``report.md``, ``metrics.json``, ``metrics.png`` and ``run.json``.
There is no baseline run here: the comparison's baseline column stays empty (``fedmkt run``
measures it). Drops, with the reason and the round, are in the report as in every run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from fedmkt.config import FederationConfig
from fedmkt.federation.events import Event


class ReportDirError(OSError):
    """The report folder cannot be written; the message says how to fix it."""


def check_writable(folder: Path) -> None:
    """Fail now (not after the whole federation ran) when ``folder`` cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ReportDirError(
            f"cannot write the report folder {folder} as uid {os.getuid()}: {exc.strerror}; "
            "with docker compose: mkdir -p runs && export FEDMKT_UID=$(id -u) (or set "
            "FEDMKT_RUNS_DIR to a folder that uid can write)") from exc


class SubmitReport:
    """Collects a run's events as they arrive and writes the report when it has ended."""

    def __init__(self, folder: Path, run_id: str, config: FederationConfig) -> None:
        self.run_dir = Path(folder) / run_id
        self.run_id = run_id
        self.config = config
        self.events: list[Event] = []
        self.started = time.perf_counter()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(config.to_yaml())
        self._events_file = open(self.run_dir / "events.jsonl", "w", encoding="utf-8")  # noqa: SIM115
        self._status(run_id=run_id, config=config.name, state="running",
                     rounds=config.rounds, started_at=time.time())

    def record(self, event: Event) -> None:
        self.events.append(event)
        self._events_file.write(json.dumps(event.to_json(), default=str) + "\n")
        self._events_file.flush()

    def finish(self, state: str, error: str = "") -> Path:
        """Fetch the adapters, write report.md / metrics.json / metrics.png; returns report.md."""
        from fedmkt.federation.report import RunOutcome, summarize, write_report

        self._events_file.close()
        wall = time.perf_counter() - self.started
        adapters = self._fetch_adapters() if state == "succeeded" else {}
        summary = summarize(self.config, RunOutcome(self.run_id, state, error, self.events, wall),
                            None, total_seconds=wall, adapters=adapters)
        paths = write_report(self.run_dir, summary)
        self._status(state=state, error=error, finished_at=time.time(),
                     report=str(paths["report"]), adapters=adapters)
        return paths["report"]

    def _fetch_adapters(self) -> dict[str, dict[str, Any]]:
        from services.run_adapters import fetch_final_adapters

        endpoints = {p.name: p.endpoint for p in self.config.participants if p.endpoint}
        return fetch_final_adapters(endpoints, self.config.tls, self.run_id, self.run_dir)

    def _status(self, **values: Any) -> None:
        path = self.run_dir / "run.json"
        status = json.loads(path.read_text()) if path.exists() else {}
        status.update(values)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(status, indent=2, default=str) + "\n")
        os.replace(tmp, path)
