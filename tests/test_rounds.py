"""Round logic against in-process fake participants and a fake aligner (no network).

Step order, parallel clients, fan-out of the server's knowledge, deadline misses (dropped while
the quorum holds, run failed when it is lost), failures of the server/aligner, cancellation,
FedAvg, baseline runs, and resume from the SQLite store after a crash.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedmkt.config import FederationConfig, parse_federation_config
from fedmkt.federation.fakes import CallLog, FakeFederation, Script, fake_federation
from fedmkt.federation.manager import RunManager
from fedmkt.federation.plan import ROUND_DONE, Step, build_plan
from fedmkt.federation.store import RunStore


def config_dict(clients: int = 2, rounds: int = 2, **extra) -> dict:
    data = {
        "name": "fake-fed",
        "rounds": rounds,
        "task": {"name": "rte"},
        "participants": [{"name": "llm", "role": "server", "model": "fake-llm"}]
        + [{"name": f"c{i}", "role": "client", "model": "fake-slm"} for i in range(1, clients + 1)],
    }
    data.update(extra)
    return data


def make(data: dict) -> tuple[str, FederationConfig]:
    text = yaml.safe_dump(data)
    return text, parse_federation_config(text)


def run_with(tmp_path: Path, fakes: FakeFederation, text: str, run_id: str = "run-1",
             db: str = "controller.db") -> tuple[RunManager, str]:
    manager = RunManager(RunStore(tmp_path / db), lambda config: fakes.connections())
    record = manager.start(text, run_id)
    record = manager.wait(record.run_id, timeout=60)
    return manager, record.state


def kinds(manager: RunManager, run_id: str) -> list[str]:
    return [e.kind for e in manager.store.events(run_id, limit=100_000)]


# ---------------------------------------------------------------------------- order


def test_a_run_follows_the_round_table(tmp_path: Path) -> None:
    text, config = make(config_dict())
    fakes = fake_federation(config)
    manager, state = run_with(tmp_path, fakes, text)
    assert state == "succeeded", manager.get("run-1").error
    log = fakes.log

    def starts(step: str, round_index: int) -> list[float]:
        return [e.started for e in log.calls(step, round_index)]

    def ends(step: str, round_index: int) -> list[float]:
        return [e.ended for e in log.calls(step, round_index)]

    for r in (1, 2):
        # step 1 before 2 before 4 before 5 before 7 before 8
        assert max(ends("train_local", r)) <= max(starts("compute_knowledge", r))
        client_computes = [e for e in log.calls("compute_knowledge", r) if e.participant != "llm"]
        server_compute = [e for e in log.calls("compute_knowledge", r) if e.participant == "llm"]
        assert len(client_computes) == 2 and len(server_compute) == 1  # server's: computed once
        server_distill = [e for e in log.calls("distill", r) if e.participant == "llm"][0]
        assert max(e.ended for e in client_computes) <= server_distill.started
        assert server_distill.ended <= server_compute[0].started
        client_distills = [e for e in log.calls("distill", r) if e.participant != "llm"]
        assert min(e.started for e in client_distills) >= server_compute[0].ended
        assert min(starts("evaluate", r)) >= max(e.ended for e in client_distills)
    # every transfer was staged where it belongs, in the destination's own tokenization
    llm = fakes.participants["llm"]
    assert set(llm.staged) == {(1, "c1"), (1, "c2"), (2, "c1"), (2, "c2")}
    for name in ("c1", "c2"):
        assert set(fakes.participants[name].staged) == {(1, "llm"), (2, "llm")}
    # the server distilled with both clients' knowledge staged
    done = manager.store.completed_steps("run-1")
    assert done[Step(1, "distill", "llm")].metrics["teachers"] == 2
    assert done[Step(1, "client_knowledge", "c1")].artefacts["digest"] == llm.staged[(1, "c1")]
    # zero-shot evaluation before anything trained, evaluation after every round
    assert {s for s in done if s.name == "evaluate" and s.round == 0} == {
        Step(0, "evaluate", n) for n in ("llm", "c1", "c2")}
    # the adapter each participant saved for a round is recorded by digest with its evaluation
    assert len(done[Step(2, "evaluate", "c1")].artefacts["adapter_digest"]) == 64
    assert done[Step(2, "evaluate", "c1")].artefacts["adapter_round"] == 2
    assert "adapter_digest" not in done[Step(0, "evaluate", "c1")].artefacts
    # the aligner built every vocabulary map before the first round
    fp = {n: p.fingerprint for n, p in fakes.participants.items()}
    assert fakes.aligner.prepared == {(fp["c1"], fp["llm"]), (fp["c2"], fp["llm"]),
                                      (fp["llm"], fp["c1"]), (fp["llm"], fp["c2"])}
    assert manager.get("run-1").rounds_completed == 2
    assert kinds(manager, "run-1")[0] == "run_started"
    assert kinds(manager, "run-1")[-1] == "run_finished"


def test_step_records_carry_timings_and_round_overhead(tmp_path: Path) -> None:
    text, config = make(config_dict(rounds=1))
    fakes = fake_federation(config, step_seconds=0.02)
    manager, state = run_with(tmp_path, fakes, text)
    assert state == "succeeded"
    done = manager.store.completed_steps("run-1")
    train = done[Step(1, "train_local", "c1")]
    assert train.wall_seconds > 0 and train.compute_seconds is not None
    assert train.compute_seconds <= train.wall_seconds
    round_done = done[Step(1, ROUND_DONE)]
    assert 0.0 <= round_done.metrics["overhead_share"] <= 1.0
    assert round_done.metrics["compute_seconds"] <= round_done.metrics["wall_seconds"]
    knowledge = done[Step(1, "client_knowledge", "c1")]
    assert knowledge.metrics["samples"] == 6 and knowledge.metrics["positions"] > 0
    assert knowledge.metrics["aligned"] + knowledge.metrics["fallback"] == \
        knowledge.metrics["positions"]


def test_clients_work_in_parallel_and_max_parallel_limits_it(tmp_path: Path) -> None:
    text, config = make(config_dict(clients=3, rounds=1))
    fakes = fake_federation(config, step_seconds=0.2)
    _, state = run_with(tmp_path, fakes, text)
    assert state == "succeeded"
    calls = fakes.log.calls("train_local", 1)
    assert max(c.started for c in calls) < min(c.ended for c in calls)  # all three overlapped

    text, config = make(config_dict(clients=3, rounds=1, max_parallel=1))
    fakes = fake_federation(config, step_seconds=0.05)
    _, state = run_with(tmp_path, fakes, text, db="serial.db")
    assert state == "succeeded"
    calls = sorted(fakes.log.calls("train_local", 1), key=lambda c: c.started)
    assert all(a.ended <= b.started for a, b in zip(calls, calls[1:], strict=False))


# ---------------------------------------------------------------------------- drops


def test_deadline_miss_drops_the_client_while_the_quorum_holds(tmp_path: Path) -> None:
    data = config_dict(rounds=2, deadlines={"train_local": 0.3})
    text, config = make(data)
    fakes = fake_federation(config, scripts={"c2": Script({("train_local", 1): ("delay", 30)})})
    manager, state = run_with(tmp_path, fakes, text)
    assert state == "succeeded", manager.get("run-1").error
    assert manager.store.dropped("run-1", 1).keys() == {"c2"}
    assert "deadline" in manager.store.dropped("run-1", 1)["c2"]
    assert manager.store.dropped("run-1", 2) == {}
    events = manager.store.events("run-1", limit=100_000)
    dropped = [e for e in events if e.kind == "participant_dropped"]
    assert len(dropped) == 1 and dropped[0].participant == "c2" and dropped[0].round == 1
    assert "quorum holds" in dropped[0].message
    # c2 is out of the rest of round 1 and back in round 2
    llm = fakes.participants["llm"]
    assert (1, "c2") not in llm.staged and (2, "c2") in llm.staged
    assert (1, "llm") not in fakes.participants["c2"].staged
    done = manager.store.completed_steps("run-1")
    assert Step(1, "evaluate", "c2") not in done and Step(2, "evaluate", "c2") in done
    assert done[Step(1, "distill", "llm")].metrics["teachers"] == 1


def test_run_fails_when_the_quorum_is_lost(tmp_path: Path) -> None:
    data = config_dict(rounds=2, deadlines={"train_local": 0.3}, quorum={"min_clients": 2})
    text, config = make(data)
    fakes = fake_federation(config, scripts={"c2": Script({("train_local", 1): ("delay", 30)})})
    manager, state = run_with(tmp_path, fakes, text)
    assert state == "failed"
    error = manager.get("run-1").error
    assert "quorum lost" in error and "c2" in error
    assert not any(e.step == "distill" for e in fakes.log.calls(round_index=1))
    kinds_seen = kinds(manager, "run-1")
    assert "participant_dropped" in kinds_seen and "error" in kinds_seen


def test_an_unreachable_client_is_dropped_but_a_server_failure_fails_the_run(
        tmp_path: Path) -> None:
    text, config = make(config_dict(rounds=1))
    fakes = fake_federation(config, scripts={"c1": Script({("distill", 1): ("unavailable",)})})
    manager, state = run_with(tmp_path, fakes, text)
    assert state == "succeeded"
    assert "unreachable" in manager.store.dropped("run-1", 1)["c1"]

    text, config = make(config_dict(rounds=1, deadlines={"retry_unavailable": 0}))
    fakes = fake_federation(config, scripts={"llm": Script({("distill", 1): ("unavailable",)})})
    manager, state = run_with(tmp_path, fakes, text, db="server.db")
    assert state == "failed" and "llm" in manager.get("run-1").error
    assert manager.store.dropped("run-1", 1) == {}


def test_a_deadline_miss_on_the_server_knowledge_drops_only_that_client(tmp_path: Path) -> None:
    data = config_dict(rounds=1, deadlines={"server_knowledge": 0.5})
    text, config = make(data)
    fakes = fake_federation(
        config, scripts={"c1": Script({("receive_knowledge", -1): ("delay", 30)})})
    manager, state = run_with(tmp_path, fakes, text)
    assert state == "succeeded", manager.get("run-1").error
    assert set(manager.store.dropped("run-1", 1)) == {"c1"}
    assert (1, "llm") in fakes.participants["c2"].staged
    assert (1, "llm") not in fakes.participants["c1"].staged


def test_a_restarting_server_is_retried_not_failed(tmp_path: Path) -> None:
    text, config = make(config_dict(rounds=1))
    fakes = fake_federation(
        config, scripts={"llm": Script({("distill", 1): ("unavailable_times", 2)})})
    manager, state = run_with(tmp_path, fakes, text)
    assert state == "succeeded", manager.get("run-1").error
    attempts = [e for e in fakes.log.calls("distill", 1) if e.participant == "llm"]
    assert [e.ok for e in attempts] == [False, False, True]
    retries = [e for e in manager.store.events("run-1", limit=100_000) if e.kind == "error"]
    assert len(retries) == 2 and "retrying" in retries[0].message

    text, config = make(config_dict(rounds=1, deadlines={"retry_unavailable": 0}))
    fakes = fake_federation(
        config, scripts={"llm": Script({("distill", 1): ("unavailable_times", 1)})})
    manager, state = run_with(tmp_path, fakes, text, db="no-retry.db")
    assert state == "failed"


def test_an_unreachable_aligner_fails_the_run(tmp_path: Path) -> None:
    text, config = make(config_dict(rounds=1, deadlines={"retry_unavailable": 0}))
    fakes = fake_federation(config, scripts={"aligner": Script({("align_knowledge", None):
                                                                ("unavailable",)})})
    manager, state = run_with(tmp_path, fakes, text)
    assert state == "failed" and "aligner" in manager.get("run-1").error


def test_a_participant_with_the_wrong_role_is_refused(tmp_path: Path) -> None:
    text, config = make(config_dict(rounds=1))
    fakes = fake_federation(config)
    fakes.participants["c1"].role = "server"
    manager, state = run_with(tmp_path, fakes, text)
    assert state == "failed" and "role" in manager.get("run-1").error
    assert not fakes.log.calls("train_local")


# ---------------------------------------------------------------------------- resume


def test_resume_after_a_crash_reruns_nothing_completed(tmp_path: Path) -> None:
    text, config = make(config_dict(rounds=3))
    crashing = fake_federation(config, scripts={"llm": Script({("distill", 2): ("crash",)})})
    manager, state = run_with(tmp_path, crashing, text)
    assert state == "failed" and "simulated crash" in manager.get("run-1").error
    completed_before = set(manager.store.completed_steps("run-1"))
    assert Step(2, "client_knowledge", "c2") in completed_before
    assert Step(2, "distill", "llm") not in completed_before
    manager.store.close()

    # A new controller on the same store, with healthy participants: StartRun resumes the run.
    log = CallLog()
    healthy = fake_federation(config, log=log)
    for name in ("c1", "c2"):  # the server still holds the knowledge staged before the crash
        healthy.participants["llm"].staged[(2, name)] = crashing.participants["llm"].staged[
            (2, name)]
    manager, state = run_with(tmp_path, healthy, text)
    assert state == "succeeded", manager.get("run-1").error
    rerun = {Step(r, s, p) for r, s, p in log.keys(ok=None)}
    assert not rerun & completed_before
    first = [key for key in log.keys() if key[1] != "describe"][0]
    assert first == (2, "distill", "llm")
    all_steps = set(manager.store.completed_steps("run-1"))
    assert set(build_plan(config).steps) <= all_steps
    assert any(e.message.startswith("resumed after") for e in manager.store.events("run-1"))


def test_a_run_interrupted_by_shutdown_resumes_in_the_next_controller(tmp_path: Path) -> None:
    text, config = make(config_dict(rounds=2))
    slow = fake_federation(config, scripts={"llm": Script({("distill", 1): ("delay", 30)})})
    manager = RunManager(RunStore(tmp_path / "c.db"), lambda c: slow.connections())
    manager.start(text, "run-1")
    for _ in range(500):
        if slow.log.calls("distill", 1):
            break
        import time

        time.sleep(0.01)
    manager.shutdown(timeout=10)
    assert manager.get("run-1").state == "running"  # left to resume, not cancelled
    manager.store.close()

    healthy = fake_federation(config)
    again = RunManager(RunStore(tmp_path / "c.db"), lambda c: healthy.connections())
    assert again.resume_interrupted() == ["run-1"]
    record = again.wait("run-1", timeout=60)
    assert record.state == "succeeded"
    assert not healthy.log.calls("train_local", 1)  # round 1's client steps were done


def test_starting_a_finished_run_again_changes_nothing(tmp_path: Path) -> None:
    text, config = make(config_dict(rounds=1))
    fakes = fake_federation(config)
    manager, state = run_with(tmp_path, fakes, text)
    calls = len(fakes.log.entries)
    assert manager.start(text, "run-1").state == "succeeded"
    assert len(fakes.log.entries) == calls
    changed = yaml.safe_load(text)
    changed["rounds"] = 5
    changed["participants"][1]["endpoint"] = "127.0.0.1:1"
    manager.store.update_run("run-1", state="failed")
    from fedmkt.errors import FailedPrecondition

    with pytest.raises(FailedPrecondition, match="different federation config"):
        manager.start(yaml.safe_dump(changed), "run-1")


# ---------------------------------------------------------------------------- other


def test_cancel_stops_a_running_run(tmp_path: Path) -> None:
    text, config = make(config_dict(rounds=2))
    fakes = fake_federation(config, scripts={"c1": Script({("train_local", 1): ("delay", 60)})})
    manager = RunManager(RunStore(tmp_path / "c.db"), lambda c: fakes.connections())
    manager.start(text, "run-1")
    for _ in range(500):
        if fakes.log.calls("train_local", 1):
            break
        import time

        time.sleep(0.01)
    manager.cancel("run-1")
    record = manager.wait("run-1", timeout=30)
    assert record.state == "cancelled"
    assert not fakes.log.calls("distill", 1)
    assert kinds(manager, "run-1")[-1] == "run_finished"


def test_homogeneous_fedavg_pushes_one_average_to_every_client(tmp_path: Path) -> None:
    data = config_dict(clients=3, rounds=1, scenario="homogeneous", fedavg=True)
    text, config = make(data)
    fakes = fake_federation(config)
    manager, state = run_with(tmp_path, fakes, text)
    assert state == "succeeded", manager.get("run-1").error
    pushed = [fakes.participants[n].pushed for n in ("c1", "c2", "c3")]
    assert all(len(p) == 1 for p in pushed) and pushed[0] == pushed[1] == pushed[2]
    from safetensors.torch import load

    averaged = load(pushed[0][0])["base_model.model.lora_A.weight"]
    inputs = [load(fakes.participants[n].fetch_adapter(1, _opts()).data)[
        "base_model.model.lora_A.weight"] for n in ("c1", "c2", "c3")]
    assert float(averaged[0, 0]) == pytest.approx(sum(float(t[0, 0]) for t in inputs) / 3)
    fedavg_call = fakes.log.calls("push_adapter", 1)[0]
    evaluate = [e for e in fakes.log.calls("evaluate", 1) if e.participant == "c1"][0]
    assert fedavg_call.ended <= evaluate.started


def _opts():
    from fedmkt.federation.interfaces import CallOptions, CancelScope

    return CallOptions.within("test", 10, CancelScope())


def test_baseline_run_transfers_no_knowledge(tmp_path: Path) -> None:
    text, config = make(config_dict(rounds=2, transfer=False, zero_shot=False))
    fakes = fake_federation(config)
    manager, state = run_with(tmp_path, fakes, text, run_id="fake-fed-baseline")
    assert state == "succeeded"
    assert manager.get("fake-fed-baseline").kind == "baseline"
    assert not fakes.log.calls("compute_knowledge") and not fakes.aligner.streams
    done = manager.store.completed_steps("fake-fed-baseline")
    assert done[Step(2, "distill", "llm")].metrics["teachers"] == 0
    assert not fakes.log.calls("evaluate", 0)


def test_llm_to_slm_sends_knowledge_one_way(tmp_path: Path) -> None:
    text, config = make(config_dict(rounds=1, scenario="llm_to_slm"))
    fakes = fake_federation(config)
    manager, state = run_with(tmp_path, fakes, text)
    assert state == "succeeded"
    assert [e.participant for e in fakes.log.calls("compute_knowledge")] == ["llm"]
    assert not fakes.participants["llm"].staged
    assert not [e for e in fakes.log.calls("distill") if e.participant == "llm"]
