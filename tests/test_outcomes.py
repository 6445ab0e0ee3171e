"""Per-sample outcomes: validation, JSON and protobuf round trips, pairing, storage."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedmkt.data.outcomes import OutcomesError, SampleOutcomes, outcomes_of, paired_columns
from fedmkt.federation.events import METRICS, Event
from fedmkt.federation.store import RunStore
from fedmkt.participant.memo import StepMemo
from fedmkt.wire.errors import WireError
from fedmkt.wire.outcomes import outcomes_from_pb, outcomes_to_pb
from fedmkt.wire.v1 import outcomes_pb2


def _example() -> SampleOutcomes:
    return outcomes_of(["a", "b", "c"], acc=[1, 0, 1], nll=[0.5, 2.0, 0.25])


def test_round_trips_through_json_and_protobuf() -> None:
    outcomes = _example()
    assert SampleOutcomes.from_json(json.loads(json.dumps(outcomes.to_json()))) == outcomes
    wire = outcomes_pb2.SampleOutcomes.FromString(outcomes_to_pb(outcomes).SerializeToString())
    assert outcomes_from_pb(wire) == outcomes
    assert outcomes_from_pb(outcomes_pb2.SampleOutcomes()) is None  # an unset field: none
    assert outcomes.column("acc").tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(KeyError, match="acc, nll"):
        outcomes.column("rouge_l")


@pytest.mark.parametrize(("ids", "values", "match"), [
    (["a", "a"], {"acc": [1, 0]}, "more than once"),
    (["a", ""], {"acc": [1, 0]}, "printable"),
    (["a", "b\n"], {"acc": [1, 0]}, "printable"),
    (["x" * 257], {"acc": [1]}, "printable"),
    (["a", "b"], {"acc": [1]}, "1 values for 2 samples"),
    (["a"], {"acc": [float("nan")]}, "not finite"),
    (["a"], {"acc": [float("inf")]}, "not finite"),
    (["a"], {"Acc": [1.0]}, "lower-case"),
    (["a"], {f"m{i}": [1.0] for i in range(17)}, "at most 16"),
])
def test_invalid_outcomes_are_refused_with_the_reason(ids, values, match) -> None:
    with pytest.raises(OutcomesError, match=match):
        SampleOutcomes(tuple(ids), values)
    message = outcomes_pb2.SampleOutcomes(
        sample_ids=ids, columns=[outcomes_pb2.OutcomeColumn(metric=m, values=v)
                                 for m, v in values.items()])
    with pytest.raises(WireError, match=match):
        outcomes_from_pb(message)


def test_a_metric_twice_on_the_wire_is_refused() -> None:
    message = outcomes_pb2.SampleOutcomes(sample_ids=["a"], columns=[
        outcomes_pb2.OutcomeColumn(metric="acc", values=[1.0]),
        outcomes_pb2.OutcomeColumn(metric="acc", values=[0.0])])
    with pytest.raises(WireError, match="more than one column"):
        outcomes_from_pb(message)


@pytest.mark.parametrize("document", [
    [], {"sample_ids": "a", "values": {}}, {"sample_ids": ["a"], "values": {"acc": ["1"]}},
    {"sample_ids": ["a"], "values": {"acc": [True]}}, {"sample_ids": ["a"]},
])
def test_malformed_json_is_refused(document) -> None:
    with pytest.raises(OutcomesError):
        SampleOutcomes.from_json(document)


def test_pairing_follows_sample_ids_not_positions() -> None:
    a = _example()
    b = outcomes_of(["c", "a", "z"], acc=[0, 0, 1], nll=[1, 1, 1])
    x, y = paired_columns(a, b, "acc")
    assert x.tolist() == [1.0, 1.0] and y.tolist() == [0.0, 0.0]  # samples a and c
    with pytest.raises(OutcomesError, match="share no sample"):
        paired_columns(a, outcomes_of(["q"], acc=[1]), "acc")


def test_events_keep_their_outcomes_in_the_store_and_old_stores_are_upgraded(tmp_path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)  # an events table as written before outcomes existed
    db.execute("CREATE TABLE events (run_id TEXT NOT NULL, sequence INTEGER NOT NULL, "
               "time REAL NOT NULL, kind TEXT NOT NULL, round INTEGER NOT NULL, step TEXT NOT "
               "NULL, participant TEXT NOT NULL, message TEXT NOT NULL, metrics TEXT NOT NULL, "
               "completed INTEGER NOT NULL, total INTEGER NOT NULL, "
               "PRIMARY KEY (run_id, sequence))")
    db.execute("INSERT INTO events VALUES ('r', 1, 0, 'metrics', 0, 'evaluate', 'p', '', '{}', "
               "0, 0)")
    db.commit()
    db.close()
    store = RunStore(path)
    store.append_event(Event("r", METRICS, step="evaluate", participant="p",
                             metrics={"acc": 2 / 3}, outcomes=_example()))
    old, new = store.events("r")
    assert old.outcomes is None and new.outcomes == _example()
    assert json.loads(json.dumps(new.to_json()))["outcomes"]["sample_ids"] == ["a", "b", "c"]


def test_memo_entries_keep_outcomes(tmp_path) -> None:
    memo = StepMemo(tmp_path)
    memo.put("k", {"acc": 0.5}, outcomes=_example().to_json())
    entry = memo.get("k")
    assert entry is not None and SampleOutcomes.from_json(entry.outcomes) == _example()
    memo.put("plain", {"acc": 0.5})
    assert memo.get("plain").outcomes is None
    assert np.isclose(_example().column("nll").sum(), 2.75)
