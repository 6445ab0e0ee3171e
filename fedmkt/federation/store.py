"""The controller's durable record of runs: SQLite, one file per controller state directory.

Tables:

* ``runs``    one row per run: its config (YAML), state, progress, error, times.
* ``steps``   one row per *completed* step ``(run, round, step, participant)`` with its wall and
              compute seconds, metrics and artefact digests (JSON). A step is written, and the
              transaction committed with ``synchronous=FULL``, before the next step starts; a
              resumed run skips exactly the steps found here.
* ``drops``   clients left out of a round (missed deadline, unreachable), with the reason.
* ``events``  every run event, numbered per run, so a watcher can replay from any point (an
              evaluation's metrics event with its per-sample outcomes, JSON).

One connection guarded by a lock: the controller's threads share it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fedmkt.data.outcomes import OutcomesError, SampleOutcomes
from fedmkt.federation.events import Event
from fedmkt.federation.plan import Step

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    config_yaml TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'fedmkt',
    state TEXT NOT NULL,
    rounds INTEGER NOT NULL,
    rounds_completed INTEGER NOT NULL DEFAULT 0,
    current_step TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    started_at REAL NOT NULL DEFAULT 0,
    finished_at REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    step TEXT NOT NULL,
    participant TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL,
    wall_seconds REAL NOT NULL,
    compute_seconds REAL,
    metrics TEXT NOT NULL DEFAULT '{}',
    artefacts TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (run_id, round, step, participant)
);
CREATE TABLE IF NOT EXISTS drops (
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    participant TEXT NOT NULL,
    step TEXT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (run_id, round, participant)
);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    round INTEGER NOT NULL,
    step TEXT NOT NULL,
    participant TEXT NOT NULL,
    message TEXT NOT NULL,
    metrics TEXT NOT NULL,
    completed INTEGER NOT NULL,
    total INTEGER NOT NULL,
    outcomes TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, sequence)
);
"""

PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "pending", "running", "succeeded", "failed", "cancelled")
FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED)


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    config_yaml: str
    kind: str  # "fedmkt" or "baseline"
    state: str
    rounds: int
    rounds_completed: int
    current_step: str
    error: str
    created_at: float
    started_at: float
    finished_at: float


@dataclass(frozen=True)
class StepRecord:
    """A completed step: timings, metrics (numbers) and artefacts (digests, counts)."""

    step: Step
    started_at: float
    finished_at: float
    wall_seconds: float
    compute_seconds: float | None
    metrics: dict[str, float] = field(default_factory=dict)
    artefacts: dict[str, object] = field(default_factory=dict)


class RunStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(events)")}
        if "outcomes" not in columns:  # a store written before per-sample outcomes existed
            self._db.execute("ALTER TABLE events ADD COLUMN outcomes TEXT NOT NULL DEFAULT ''")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- runs -----------------------------------------------------------------------------
    def create_run(self, run_id: str, config_yaml: str, rounds: int, kind: str = "fedmkt") -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO runs (run_id, config_yaml, kind, state, rounds, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, config_yaml, kind, PENDING, rounds, time.time()),
            )

    def get_run(self, run_id: str) -> RunRecord | None:
        rows = self._query(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,))
        return RunRecord(*rows[0]) if rows else None

    def list_runs(self) -> list[RunRecord]:
        rows = self._query(f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY created_at, run_id")
        return [RunRecord(*row) for row in rows]

    def update_run(self, run_id: str, **values: object) -> None:
        allowed = {"state", "rounds_completed", "current_step", "error", "started_at",
                   "finished_at", "config_yaml"}
        unknown = set(values) - allowed
        if unknown:
            raise ValueError(f"cannot update run fields {sorted(unknown)}")
        if not values:
            return
        assignments = ", ".join(f"{name} = ?" for name in values)
        with self._tx() as db:
            db.execute(f"UPDATE runs SET {assignments} WHERE run_id = ?",
                       (*values.values(), run_id))

    # -- steps ----------------------------------------------------------------------------
    def record_step(self, run_id: str, record: StepRecord) -> None:
        """Record a completed step durably (replaces an earlier record of the same step)."""
        s = record.step
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO steps VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, s.round, s.name, s.participant, record.started_at, record.finished_at,
                 record.wall_seconds, record.compute_seconds,
                 json.dumps(record.metrics, sort_keys=True),
                 json.dumps(record.artefacts, sort_keys=True)),
            )

    def completed_steps(self, run_id: str) -> dict[Step, StepRecord]:
        rows = self._query(
            "SELECT round, step, participant, started_at, finished_at, wall_seconds, "
            "compute_seconds, metrics, artefacts FROM steps WHERE run_id = ? "
            "ORDER BY started_at", (run_id,))
        out = {}
        for r, name, who, started, finished, wall, compute, metrics, artefacts in rows:
            step = Step(r, name, who)
            out[step] = StepRecord(step, started, finished, wall, compute, json.loads(metrics),
                                   json.loads(artefacts))
        return out

    def is_done(self, run_id: str, step: Step) -> bool:
        rows = self._query(
            "SELECT 1 FROM steps WHERE run_id = ? AND round = ? AND step = ? AND participant = ?",
            (run_id, step.round, step.name, step.participant))
        return bool(rows)

    # -- drops ----------------------------------------------------------------------------
    def record_drop(self, run_id: str, round_index: int, participant: str, step: str,
                    reason: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO drops VALUES (?, ?, ?, ?, ?)",
                       (run_id, round_index, participant, step, reason))

    def clear_drops(self, run_id: str, round_index: int) -> None:
        """Forget the drops of one round (a resumed run gives those clients another chance)."""
        with self._tx() as db:
            db.execute("DELETE FROM drops WHERE run_id = ? AND round = ?", (run_id, round_index))

    def dropped(self, run_id: str, round_index: int) -> dict[str, str]:
        rows = self._query("SELECT participant, reason FROM drops WHERE run_id = ? AND round = ?",
                           (run_id, round_index))
        return dict(rows)

    def all_drops(self, run_id: str) -> list[tuple[int, str, str, str]]:
        return [tuple(r) for r in self._query(
            "SELECT round, participant, step, reason FROM drops WHERE run_id = ? "
            "ORDER BY round, participant", (run_id,))]

    # -- events ---------------------------------------------------------------------------
    def append_event(self, event: Event) -> Event:
        """Store ``event`` with the next sequence number of its run; returns it numbered."""
        with self._tx() as db:
            (last,) = db.execute("SELECT COALESCE(MAX(sequence), 0) FROM events WHERE run_id = ?",
                                 (event.run_id,)).fetchone()
            numbered = event.with_sequence(last + 1)
            outcomes = "" if numbered.outcomes is None else json.dumps(numbered.outcomes.to_json())
            db.execute(
                "INSERT INTO events (run_id, sequence, time, kind, round, step, participant, "
                "message, metrics, completed, total, outcomes) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (numbered.run_id, numbered.sequence, numbered.time, numbered.kind,
                 numbered.round, numbered.step, numbered.participant, numbered.message,
                 json.dumps(numbered.metrics, sort_keys=True), numbered.completed,
                 numbered.total, outcomes),
            )
        return numbered

    def events(self, run_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        rows = self._query(
            "SELECT run_id, sequence, time, kind, round, step, participant, message, metrics, "
            "completed, total, outcomes FROM events WHERE run_id = ? AND sequence > ? "
            "ORDER BY sequence LIMIT ?", (run_id, after, limit))
        return [Event(run_id=r[0], sequence=r[1], time=r[2], kind=r[3], round=r[4], step=r[5],
                      participant=r[6], message=r[7], metrics=json.loads(r[8]), completed=r[9],
                      total=r[10], outcomes=_stored_outcomes(r[11])) for r in rows]


def _stored_outcomes(text: str) -> SampleOutcomes | None:
    """The outcomes column of an event row; None when empty (or not readable: the event then
    reads as one without outcomes, and a report says it cannot compare those samples)."""
    if not text:
        return None
    try:
        return SampleOutcomes.from_json(json.loads(text))
    except (ValueError, OutcomesError):
        return None


_RUN_COLUMNS = ("run_id, config_yaml, kind, state, rounds, rounds_completed, current_step, "
                "error, created_at, started_at, finished_at")
