"""Live progress of a run in the terminal (rich): rounds, steps, losses, evaluation metrics.

``RunView`` is fed the run's events one by one (``update``). On a terminal it redraws a table
(one row per participant: current step, progress, last loss, last evaluation); elsewhere (logs,
CI) it prints one line per finished step, metric, drop and error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from fedmkt.federation import events as ev
from fedmkt.federation.events import Event

EVAL_KEYS = ("acc", "accuracy", "rouge_l", "nll")


@dataclass
class _Row:
    step: str = ""
    completed: int = 0
    total: int = 0
    loss: float | None = None
    evaluation: str = ""
    state: str = "waiting"


@dataclass
class _State:
    run_id: str = ""
    rounds: int = 0
    round: int = 0
    started: float = field(default_factory=time.monotonic)
    rows: dict[str, _Row] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    finished: str = ""


class RunView:
    def __init__(self, title: str = "", *, participants: list[str] | None = None,
                 console: Console | None = None, live: bool | None = None) -> None:
        self.console = console or Console(stderr=False)
        self.live_mode = self.console.is_terminal if live is None else live
        self.title = title
        self.state = _State(rows={name: _Row() for name in participants or []})
        self._live: Live | None = None

    def __enter__(self) -> RunView:
        if self.live_mode:
            self._live = Live(self._render(), console=self.console, refresh_per_second=4,
                              transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(*exc)
            self._live = None

    # ------------------------------------------------------------------ events
    def update(self, event: Event) -> None:
        s = self.state
        s.run_id = event.run_id
        if event.kind == ev.RUN_STARTED:
            s.rounds = event.total or s.rounds
            self._say(f"run {event.run_id} {event.message}")
        elif event.kind in (ev.STEP_STARTED, ev.STEP_PROGRESS, ev.STEP_FINISHED):
            self._step(event)
        elif event.kind == ev.METRICS:
            self._metrics(event)
        elif event.kind == ev.PARTICIPANT_DROPPED:
            self._say(f"[dropped] {event.message}")
            self._row(event.participant).state = "dropped"
        elif event.kind == ev.ERROR:
            self._say(f"[error] {event.message}")
        elif event.kind == ev.RUN_FINISHED:
            s.finished = event.message
            self._say(f"run {event.run_id} {event.message} "
                      f"({event.completed}/{event.total} rounds)")
        if self._live is not None:
            self._live.update(self._render())

    def _row(self, participant: str) -> _Row:
        return self.state.rows.setdefault(participant or "controller", _Row())

    def _step(self, event: Event) -> None:
        self.state.round = max(self.state.round, event.round)
        row = self._row(event.participant)
        row.step = f"r{event.round} {event.step}"
        if event.kind == ev.STEP_STARTED:
            row.completed, row.total, row.state = 0, 0, "running"
        elif event.kind == ev.STEP_PROGRESS:
            row.completed, row.total = event.completed, event.total
        else:
            row.state = "done"
            row.completed = row.total = max(row.total, 1)
        if "loss" in event.metrics:
            row.loss = event.metrics["loss"]
        if event.kind == ev.STEP_FINISHED and not self.live_mode:
            extra = ", ".join(f"{k}={v:.4g}" for k, v in event.metrics.items()
                              if k in ("loss", "wall_seconds", "aligned_share", "samples"))
            self._say(f"round {event.round} {event.step} {event.participant or ''} done"
                      + (f" ({extra})" if extra else ""))

    def _metrics(self, event: Event) -> None:
        if event.step == "evaluate" and event.participant:
            shown = ", ".join(f"{k}={event.metrics[k]:.3f}" for k in EVAL_KEYS
                              if k in event.metrics)
            self._row(event.participant).evaluation = f"r{event.round}: {shown}"
            if not self.live_mode:
                self._say(f"round {event.round} evaluation {event.participant}: {shown}")
        elif event.step == "round_done":
            self._say(event.message)

    def _say(self, text: str) -> None:
        self.state.notes = (self.state.notes + [text])[-6:]
        if self._live is None:
            self.console.print(text, highlight=False, markup=False)

    # ------------------------------------------------------------------ rendering
    def _render(self) -> Group:
        s = self.state
        elapsed = time.monotonic() - s.started
        head = Text(f"{self.title or s.run_id}  round {s.round}/{s.rounds or '?'}  "
                    f"{elapsed:5.0f} s" + (f"  [{s.finished}]" if s.finished else ""),
                    style="bold")
        table = Table(expand=False)
        for column in ("participant", "step", "progress", "loss", "evaluation"):
            table.add_column(column)
        for name, row in s.rows.items():
            progress = (f"{row.completed}/{row.total}" if row.total else "") + (
                f" {row.state}" if row.state != "running" else "")
            table.add_row(name, row.step, progress.strip(),
                          "" if row.loss is None else f"{row.loss:.4f}", row.evaluation)
        notes = Text("\n".join(s.notes), style="dim")
        return Group(head, table, notes)
