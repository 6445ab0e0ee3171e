"""Run events: what watchers see (step started/finished, progress, metrics, drops, errors).

``Event`` mirrors ``fedmkt.v1.RunEvent``; ``kind`` is the enum name without its prefix
("step_started", ...). ``EventHub`` stores every event (numbered per run) and wakes the
watchers; ``watch`` replays stored events after a sequence number, then follows live ones until
the run's ``run_finished`` event (or until the watcher stops). Progress events are throttled
per (step, participant) so a fast loop does not flood the store.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from fedmkt.data.outcomes import SampleOutcomes

if TYPE_CHECKING:
    from fedmkt.federation.store import RunStore

RUN_STARTED = "run_started"
STEP_STARTED = "step_started"
STEP_PROGRESS = "step_progress"
STEP_FINISHED = "step_finished"
METRICS = "metrics"
PARTICIPANT_DROPPED = "participant_dropped"
ERROR = "error"
RUN_FINISHED = "run_finished"
KINDS = (RUN_STARTED, STEP_STARTED, STEP_PROGRESS, STEP_FINISHED, METRICS, PARTICIPANT_DROPPED,
         ERROR, RUN_FINISHED)


@dataclass(frozen=True)
class Event:
    run_id: str
    kind: str
    round: int = 0
    step: str = ""
    participant: str = ""
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    completed: int = 0
    total: int = 0
    time: float = field(default_factory=time.time)
    sequence: int = 0
    outcomes: SampleOutcomes | None = None  # metrics events of an evaluation: per sample

    def to_json(self) -> dict[str, object]:
        """The event as a JSON-ready dict (``outcomes`` as its JSON document or None)."""
        document = {k: v for k, v in self.__dict__.items() if k != "outcomes"}
        document["outcomes"] = None if self.outcomes is None else self.outcomes.to_json()
        return document

    def with_sequence(self, sequence: int) -> Event:
        return replace(self, sequence=sequence)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown event kind {self.kind!r}")
        clean = {str(k): float(v) for k, v in self.metrics.items() if math.isfinite(float(v))}
        object.__setattr__(self, "metrics", clean)


class EventHub:
    """Stores events and wakes watchers. ``progress_interval``: the least seconds between two
    stored progress events of one (run, round, step, participant); the final one always goes."""

    def __init__(self, store: RunStore, progress_interval: float = 0.5) -> None:
        self.store = store
        self.progress_interval = progress_interval
        self._changed = threading.Condition()
        self._last_progress: dict[tuple, float] = {}
        self._listeners: list[Callable[[Event], None]] = []

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener`` with every stored event (logs, metrics); must not block."""
        self._listeners.append(listener)

    def publish(self, event: Event) -> Event | None:
        """Store and announce ``event``; returns it numbered (None if throttled away)."""
        if event.kind == STEP_PROGRESS:
            key = (event.run_id, event.round, event.step, event.participant)
            now = time.monotonic()
            last = self._last_progress.get(key)
            final = event.total > 0 and event.completed >= event.total
            if last is not None and now - last < self.progress_interval and not final:
                return None
            self._last_progress[key] = now
        numbered = self.store.append_event(event)
        with self._changed:
            self._changed.notify_all()
        for listener in self._listeners:
            listener(numbered)
        return numbered

    def watch(self, run_id: str, after: int = 0, *, is_final: Callable[[], bool],
              stop: Callable[[], bool] = lambda: False, poll: float = 0.5) -> Iterator[Event]:
        """Events of ``run_id`` after sequence ``after``: stored ones, then live ones, until
        every stored event is delivered and ``is_final()`` (the run reached a final state) is
        true, or ``stop()`` turns true. A run records ``run_finished`` before its final state,
        so a watcher always receives it."""
        last = after
        while True:
            final = is_final()  # read before the events: all of a final run's are stored
            batch = self.store.events(run_id, last)
            for event in batch:
                last = event.sequence
                yield event
            if batch:
                continue
            if final or stop():
                return
            with self._changed:
                self._changed.wait(poll)
