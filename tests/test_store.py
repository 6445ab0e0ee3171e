"""The controller's SQLite run store: durable steps, drops, numbered events."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from fedmkt.federation.events import Event, EventHub
from fedmkt.federation.plan import Step
from fedmkt.federation.store import RunStore, StepRecord


def test_runs_steps_and_drops_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state" / "controller.db"
    store = RunStore(path)
    store.create_run("r1", "name: r1\n", rounds=3)
    store.update_run("r1", state="running", current_step="r1/train_local/a")
    step = Step(1, "train_local", "a")
    store.record_step("r1", StepRecord(step, 10.0, 12.5, 2.5, 2.0, {"loss": 1.25},
                                       {"digest": "ab" * 32}))
    store.record_drop("r1", 1, "b", "train_local", "missed the deadline")
    store.close()

    again = RunStore(path)
    run = again.get_run("r1")
    assert run is not None and run.state == "running" and run.rounds == 3
    assert run.current_step == "r1/train_local/a"
    done = again.completed_steps("r1")
    assert list(done) == [step]
    assert done[step].metrics == {"loss": 1.25} and done[step].compute_seconds == 2.0
    assert done[step].artefacts == {"digest": "ab" * 32}
    assert again.is_done("r1", step) and not again.is_done("r1", Step(1, "train_local", "b"))
    assert again.dropped("r1", 1) == {"b": "missed the deadline"}
    assert again.dropped("r1", 2) == {}
    assert again.get_run("nope") is None


def test_recording_a_step_twice_keeps_one_row(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "c.db")
    store.create_run("r", "x: 1\n", rounds=1)
    step = Step(0, "evaluate", "a")
    store.record_step("r", StepRecord(step, 1.0, 2.0, 1.0, None, {"accuracy": 0.5}))
    store.record_step("r", StepRecord(step, 3.0, 4.0, 1.0, None, {"accuracy": 0.75}))
    done = store.completed_steps("r")
    assert len(done) == 1 and done[step].metrics["accuracy"] == 0.75


def test_update_rejects_unknown_fields(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "c.db")
    store.create_run("r", "x: 1\n", rounds=1)
    with pytest.raises(ValueError, match="rounds"):
        store.update_run("r", rounds=9)


def test_events_are_numbered_per_run_even_from_many_threads(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "c.db")
    for run in ("a", "b"):
        store.create_run(run, "x: 1\n", rounds=1)

    def publish(run: str) -> None:
        for i in range(25):
            store.append_event(Event(run_id=run, kind="step_progress", completed=i, total=25))

    threads = [threading.Thread(target=publish, args=(run,)) for run in ("a", "b", "a")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [e.sequence for e in store.events("a")] == list(range(1, 51))
    assert [e.sequence for e in store.events("b")] == list(range(1, 26))
    assert [e.sequence for e in store.events("a", after=48)] == [49, 50]


def test_event_metrics_drop_non_finite_values() -> None:
    event = Event(run_id="r", kind="metrics", metrics={"a": 1.0, "b": float("nan"),
                                                       "c": float("inf")})
    assert event.metrics == {"a": 1.0}
    with pytest.raises(ValueError, match="kind"):
        Event(run_id="r", kind="bogus")


def test_hub_throttles_progress_but_keeps_the_last(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "c.db")
    store.create_run("r", "x: 1\n", rounds=1)
    hub = EventHub(store, progress_interval=3600)
    for i in range(1, 11):
        hub.publish(Event(run_id="r", kind="step_progress", step="s", completed=i, total=10))
    kept = [e.completed for e in store.events("r")]
    assert kept == [1, 10]


def test_watch_replays_then_follows_until_final(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "c.db")
    store.create_run("r", "x: 1\n", rounds=1)
    hub = EventHub(store)
    hub.publish(Event(run_id="r", kind="run_started"))
    hub.publish(Event(run_id="r", kind="step_started", step="evaluate"))
    final = threading.Event()
    seen: list[str] = []

    def watcher() -> None:
        for event in hub.watch("r", after=1, is_final=final.is_set, poll=0.05):
            seen.append(event.kind)

    thread = threading.Thread(target=watcher)
    thread.start()
    hub.publish(Event(run_id="r", kind="run_finished"))
    final.set()
    thread.join(10)
    assert not thread.is_alive()
    assert seen == ["step_started", "run_finished"]
