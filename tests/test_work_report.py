"""The model-work table: sums per step and participant, ratios, and the knowledge trailer."""

from __future__ import annotations

import json

import pytest

from fedmkt.federation import events as ev
from fedmkt.federation.events import Event
from fedmkt.federation.work_report import totals, work_rows, work_section
from fedmkt.models.work import Work, WorkLedger, work_ratio
from services.controller.clients import parse_work


def finished(step: str, participant: str, done: tuple[int, int, int],
             floor: tuple[int, int, int], round_index: int = 1) -> Event:
    metrics = {"loss": 1.0, "wall_seconds": 2.0}
    for kind, values in (("work", done), ("floor", floor)):
        for name, value in zip(("forward_tokens", "backward_tokens", "head_positions"), values,
                               strict=True):
            metrics[f"{kind}/{name}"] = value
    return Event("run", ev.STEP_FINISHED, round=round_index, step=step, participant=participant,
                 metrics=metrics)


def test_rows_sum_over_rounds_and_set_done_against_floor() -> None:
    events = [
        finished("train_local", "c1", (120, 120, 30), (100, 100, 30), 1),
        finished("train_local", "c1", (110, 110, 20), (100, 100, 20), 2),
        finished("evaluate", "c1", (50, 0, 10), (50, 0, 5), 1),
        Event("run", ev.STEP_FINISHED, step="fedavg", metrics={"wall_seconds": 1.0}),
        Event("run", ev.STEP_STARTED, step="train_local", participant="c1"),
    ]
    rows = work_rows(events)
    assert [(r["step"], r["participant"]) for r in rows] == [("train_local", "c1"),
                                                            ("evaluate", "c1")]
    train = rows[0]
    assert train["calls"] == 2
    assert train["work/forward_tokens"] == 230 and train["floor/backward_tokens"] == 200
    assert train["ratio"] == pytest.approx(460 / 400)
    assert train["head_ratio"] == 1.0
    assert rows[1]["head_ratio"] == 2.0
    total = totals(rows)
    assert total["ratio"] == pytest.approx((460 + 50) / (400 + 50))
    text = "\n".join(work_section({"FedMKT": rows, "baseline": []}))
    assert "| train_local | c1 | 230 | 230 | 400 | 1.15 |" in text
    assert "baseline run" not in text and "**FedMKT run**" in text


def test_no_work_reported_gives_no_section() -> None:
    assert work_section({"FedMKT": [], "baseline": []}) == []


def test_ledger_and_ratio() -> None:
    ledger = WorkLedger()
    ledger.done.add(forward=10, backward=10, head=3)
    ledger.floor.add(forward=8, backward=8, head=3)
    other = WorkLedger()
    other.done += Work(2, 2, 1)
    ledger += other
    assert ledger.metrics()["work/forward_tokens"] == 12.0
    assert ledger.metrics()["floor/head_positions"] == 3.0
    assert work_ratio(0, 0) == 1.0 and work_ratio(3, 0) == float("inf")
    assert work_ratio(12, 8) == 1.5


def test_the_knowledge_trailer_is_validated() -> None:
    good = {"work/forward_tokens": 10.0, "floor/head_positions": 3}
    assert parse_work(json.dumps(good)) == {"work/forward_tokens": 10.0,
                                            "floor/head_positions": 3.0}
    for bad in ("not json", json.dumps([1, 2]), json.dumps({"work/other": 1}),
                json.dumps({"work/forward_tokens": -1}), json.dumps({"work/forward_tokens": True}),
                '{"work/forward_tokens": NaN}', json.dumps({"work/forward_tokens": "3"}),
                "x" * 10_000):
        assert parse_work(bad) == {}, bad
