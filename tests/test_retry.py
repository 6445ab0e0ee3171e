"""Retries while the server or the aligner is unreachable (a restart), issue 10.

Before, the server → clients fan-out (server_knowledge) failed the run at the first
``Unreachable`` of the server or the aligner, whatever ``deadlines.retry_unavailable`` said; and
the backoff of the other steps stopped as soon as the next wait would pass the window (after
31 of 60 s with waits 1, 2, 4, 8, 16), instead of using the window up.
"""

from __future__ import annotations

from pathlib import Path

from fedmkt.federation.fakes import Script, fake_federation
from fedmkt.federation.plan import Step
from fedmkt.federation.rounds import RetryWindow
from tests.test_rounds import config_dict, make, run_with


def _retries(manager, run_id: str = "run-1") -> list:
    return [e for e in manager.store.events(run_id, limit=100_000)
            if e.kind == "error" and "retrying" in e.message]


def test_the_backoff_uses_the_whole_window_and_ends_with_it() -> None:
    now = [0.0]
    window = RetryWindow(60.0, clock=lambda: now[0])
    waits = []
    while (wait := window.next_wait()) is not None:
        waits.append(wait)
        now[0] += wait + 0.5  # each try takes half a second
    assert waits[:5] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert waits[5] == 60.0 - 31.0 - 2.5  # shortened: it ends with the window (the last try)
    assert abs(sum(waits) + 0.5 * (len(waits) - 1) - 60.0) < 1e-9  # the last try: at 60 s
    assert RetryWindow(0.0, clock=lambda: 0.0).next_wait() is None


def test_a_step_is_retried_until_the_window_is_used_up(tmp_path: Path) -> None:
    # window 2.5 s: tries at 0, 1 and 2.5 s; before, the third try was never made (1 + 2 > 2.5)
    text, config = make(config_dict(rounds=1, deadlines={"retry_unavailable": 2.5}))
    fakes = fake_federation(
        config, scripts={"llm": Script({("distill", 1): ("unavailable_times", 2)})})
    manager, state = run_with(tmp_path, fakes, text)
    assert state == "succeeded", manager.get("run-1").error
    attempts = [e for e in fakes.log.calls("distill", 1) if e.participant == "llm"]
    assert [e.ok for e in attempts] == [False, False, True]
    assert attempts[2].started - attempts[0].started >= 2.4


def test_an_unreachable_server_during_server_knowledge_is_retried(tmp_path: Path) -> None:
    text, config = make(config_dict(rounds=1, deadlines={"retry_unavailable": 10}))
    fakes = fake_federation(
        config, scripts={"llm": Script({("compute_knowledge", 1): ("unavailable_times", 2)})})
    manager, state = run_with(tmp_path, fakes, text)
    assert state == "succeeded", manager.get("run-1").error
    computes = [e for e in fakes.log.calls("compute_knowledge", 1) if e.participant == "llm"]
    assert [e.ok for e in computes] == [False, False, True]
    assert len(_retries(manager)) == 2
    assert manager.store.dropped("run-1", 1) == {}
    done = manager.store.completed_steps("run-1")
    for client in ("c1", "c2"):
        assert (1, "llm") in fakes.participants[client].staged
        assert Step(1, "server_knowledge", client) in done


def test_an_aligner_restart_during_the_fan_out_retries_only_the_clients_not_reached(
        tmp_path: Path) -> None:
    # llm_to_slm: the aligner is used by the fan-out only; its first stream is refused
    text, config = make(config_dict(rounds=1, scenario="llm_to_slm",
                                    deadlines={"retry_unavailable": 10}))
    fakes = fake_federation(
        config, scripts={"aligner": Script({("align_knowledge", None): ("unavailable_times", 1)})})
    manager, state = run_with(tmp_path, fakes, text)
    assert state == "succeeded", manager.get("run-1").error
    assert manager.store.dropped("run-1", 1) == {}
    assert len(_retries(manager)) == 1 and "aligner" in _retries(manager)[0].message
    received = {name: [e.ok for e in fakes.log.calls()
                       if e.participant == name and e.step.startswith("receive_knowledge")]
                for name in ("c1", "c2")}
    # one client got the knowledge at the first try and was not sent it again
    assert sorted(received.values()) == [[False, True], [True]], received
    for client in ("c1", "c2"):
        assert (1, "llm") in fakes.participants[client].staged
    computes = [e for e in fakes.log.calls("compute_knowledge", 1) if e.participant == "llm"]
    assert len(computes) == 2  # the source is read again for the client not reached


def test_without_a_retry_window_the_fan_out_fails_at_once(tmp_path: Path) -> None:
    text, config = make(config_dict(rounds=1, deadlines={"retry_unavailable": 0}))
    fakes = fake_federation(
        config, scripts={"llm": Script({("compute_knowledge", 1): ("unavailable_times", 1)})})
    manager, state = run_with(tmp_path, fakes, text)
    assert state == "failed" and "server's knowledge stream failed" in manager.get("run-1").error
    assert manager.store.dropped("run-1", 1) == {}
    assert not _retries(manager)


def test_an_aligner_down_for_longer_than_the_window_fails_the_run(tmp_path: Path) -> None:
    text, config = make(config_dict(rounds=1, scenario="llm_to_slm",
                                    deadlines={"retry_unavailable": 1.5}))
    fakes = fake_federation(
        config, scripts={"aligner": Script({("align_knowledge", None): ("unavailable",)})})
    manager, state = run_with(tmp_path, fakes, text)
    assert state == "failed" and "aligner" in manager.get("run-1").error
    assert manager.store.dropped("run-1", 1) == {}  # the clients are not to blame
    assert len(_retries(manager)) == 2  # waits of 1 and 0.5 s
