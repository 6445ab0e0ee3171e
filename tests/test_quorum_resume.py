"""A run that lost its quorum can be resumed (issue 10).

Before, the drop record of the lost round persisted: every resume skipped the dropped client
again, redid the server's distillation without it, recorded that as done, and failed again on
the quorum; and resuming with a smaller quorum was refused as "a different federation config".
"""

from __future__ import annotations

from pathlib import Path

from fedmkt.federation.fakes import CallLog, Script, fake_federation
from fedmkt.federation.plan import Step
from tests.test_rounds import config_dict, make, run_with


def _lose_quorum(tmp_path: Path, **extra):
    text, config = make(config_dict(rounds=2, quorum={"min_clients": 2},
                                    deadlines={"retry_unavailable": 0}, **extra))
    down = fake_federation(config, scripts={"c2": Script({("train_local", 1): ("unavailable",)})})
    manager, state = run_with(tmp_path, down, text)
    assert state == "failed" and "quorum lost" in manager.get("run-1").error
    manager.store.close()
    return text, config, down.participants["llm"].staged


def _restore(fakes, staged) -> None:
    """The server still holds the knowledge staged before (the fakes' state is in memory)."""
    fakes.participants["llm"].staged.update(staged)


def test_a_run_that_lost_its_quorum_resumes_with_the_dropped_client_back(tmp_path: Path) -> None:
    text, config, staged = _lose_quorum(tmp_path)
    log = CallLog()
    healthy = fake_federation(config, log=log)  # c2 answers again
    _restore(healthy, staged)
    manager, state = run_with(tmp_path, healthy, text)
    assert state == "succeeded", manager.get("run-1").error
    assert manager.store.dropped("run-1", 1) == {}
    assert [e.participant for e in log.calls("train_local", 1)] == ["c2"]  # c1's was done
    done = manager.store.completed_steps("run-1")
    assert done[Step(1, "distill", "llm")].metrics["teachers"] == 2
    assert done[Step(1, "round_done")].artefacts["dropped"] == []
    assert any("tries these clients again" in e.message
               for e in manager.store.events("run-1", limit=100_000))


def test_a_resume_while_the_client_is_still_down_records_nothing_more(tmp_path: Path) -> None:
    text, config, staged = _lose_quorum(tmp_path)
    still_down = fake_federation(
        config, scripts={"c2": Script({("train_local", 1): ("unavailable",)})})
    _restore(still_down, staged)
    manager, state = run_with(tmp_path, still_down, text)
    assert state == "failed" and "quorum lost" in manager.get("run-1").error
    done = manager.store.completed_steps("run-1")
    assert Step(1, "distill", "llm") not in done  # not redone without c2 and recorded
    assert not [e for e in still_down.log.calls() if e.step == "distill"]


def test_a_lost_run_resumes_with_a_smaller_quorum(tmp_path: Path) -> None:
    text, config, staged = _lose_quorum(tmp_path)
    relaxed_text, relaxed = make(config_dict(rounds=2, quorum={"min_clients": 1},
                                             deadlines={"retry_unavailable": 0}))
    still_down = fake_federation(
        relaxed, scripts={"c2": Script({("train_local", 1): ("unavailable",)})})
    _restore(still_down, staged)
    manager, state = run_with(tmp_path, still_down, relaxed_text)
    assert state == "succeeded", manager.get("run-1").error
    assert set(manager.store.dropped("run-1", 1)) == {"c2"}  # out of round 1, back in round 2
    assert manager.store.dropped("run-1", 2) == {}
    done = manager.store.completed_steps("run-1")
    assert done[Step(1, "distill", "llm")].metrics["teachers"] == 1
    assert Step(2, "evaluate", "c2") in done


def test_drops_of_a_round_that_kept_its_quorum_stay_on_resume(tmp_path: Path) -> None:
    """A resumed run does what an undisturbed one would: the client stays out of that round."""
    text, config = make(config_dict(rounds=1, deadlines={"retry_unavailable": 0}))
    crashing = fake_federation(config, scripts={
        "c2": Script({("train_local", 1): ("unavailable",)}),
        "llm": Script({("distill", 1): ("crash",)})})
    manager, state = run_with(tmp_path, crashing, text)
    assert state == "failed" and "simulated crash" in manager.get("run-1").error
    manager.store.close()
    log = CallLog()
    healthy = fake_federation(config, log=log)
    healthy.participants["llm"].staged.update(crashing.participants["llm"].staged)
    manager, state = run_with(tmp_path, healthy, text)
    assert state == "succeeded", manager.get("run-1").error
    assert set(manager.store.dropped("run-1", 1)) == {"c2"}
    assert not log.calls("train_local", 1)
