"""The embedded run's process management: every service it starts is gone afterwards — after a
failure, after SIGTERM (Ctrl-C), and (Linux) even when the run process itself is killed.

The services here are a fake program (written to a temporary folder) that speaks just enough
gRPC: health SERVING, a READY line, and a ControllerService whose StartRun hangs or fails. Its
behaviour per service comes from environment variables; every process it starts writes its pid
to a folder so the test can check that none is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import yaml

from services.embedded import EmbeddedRun, EmbeddedRunError, ServiceProcess, list_runs

FAKE_SERVICE = textwrap.dedent('''
    import os, signal, subprocess, sys, time
    from concurrent import futures
    from pathlib import Path

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from fedmkt.wire.v1 import controller_pb2_grpc

    args = sys.argv[1:]
    kind = args[1]
    name = Path(args[args.index("--config") + 1]).stem if "--config" in args else kind
    pids = Path(os.environ["FAKE_PIDS"])
    (pids / f"{name}-{os.getpid()}.pid").write_text(str(os.getpid()))
    mode = os.environ.get("FAKE_MODE_" + name.replace("-", "_"), "")
    if mode == "fail":
        print("loading model... ModelNotFoundError: no such model", flush=True)
        sys.exit(3)
    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if mode == "child":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        (pids / f"{name}-child-{child.pid}.pid").write_text(str(child.pid))

    class Controller(controller_pb2_grpc.ControllerServiceServicer):
        def StartRun(self, request, context):
            (pids / "startrun").write_text("called")
            if os.environ.get("FAKE_STARTRUN") == "fail":
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "fake controller says no")
            time.sleep(3600)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    checker = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    for service in ("", "fedmkt.v1.AlignerService", "fedmkt.v1.ControllerService",
                    "fedmkt.v1.ParticipantService"):
        checker.set(service, health_pb2.HealthCheckResponse.SERVING)
    controller_pb2_grpc.add_ControllerServiceServicer_to_server(Controller(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"READY {name} grpc={port}", flush=True)
    while True:
        time.sleep(1)
''')

DRIVER = textwrap.dedent('''
    import sys
    from pathlib import Path
    from services.embedded import EmbeddedRun

    config, runs, fake = sys.argv[1:4]
    run = EmbeddedRun(Path(config), runs_dir=Path(runs), run_id="r1", view=False,
                      command=[sys.executable, fake], stop_grace=2.0, health_timeout=20)
    try:
        run.run()
    except KeyboardInterrupt:
        sys.exit(130)
''')


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    program = tmp_path / "fake_service.py"
    program.write_text(FAKE_SERVICE)
    pids = tmp_path / "pids"
    pids.mkdir()
    config = tmp_path / "fed.yaml"
    config.write_text(yaml.safe_dump({
        "name": "embedded-test", "rounds": 1, "task": {"name": "rte"},
        "participants": [
            {"name": "llm", "role": "server", "model": "tiny-mistral"},
            {"name": "c1", "role": "client", "model": "tiny-gpt2"},
            {"name": "c2", "role": "client", "model": "tiny-neox"},
        ]}))
    monkeypatch.setenv("FAKE_PIDS", str(pids))
    return {"program": program, "pids": pids, "config": config, "runs": tmp_path / "runs"}


def started_pids(pids: Path) -> list[int]:
    return [int(p.read_text()) for p in pids.glob("*.pid")]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids: list[int], seconds: float = 20.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = [pid for pid in pids if alive(pid)]
        if not left:
            return []
        time.sleep(0.1)
    return [pid for pid in pids if alive(pid)]


def embedded(fake: dict[str, Path], **kwargs) -> EmbeddedRun:
    return EmbeddedRun(fake["config"], runs_dir=fake["runs"], run_id="r1", view=False,
                       command=[sys.executable, str(fake["program"])], stop_grace=2.0,
                       health_timeout=20, **kwargs)


def test_stop_escalates_to_sigkill_and_takes_the_whole_group(fake: dict[str, Path],
                                                             monkeypatch) -> None:
    monkeypatch.setenv("FAKE_MODE_aligner", "ignore-term")
    stubborn = ServiceProcess("aligner", [sys.executable, str(fake["program"]), "serve",
                                          "aligner"], fake["runs"] / "a.log")
    monkeypatch.setenv("FAKE_MODE_controller", "child")
    parent = ServiceProcess("controller", [sys.executable, str(fake["program"]), "serve",
                                           "controller"], fake["runs"] / "c.log")
    for service in (stubborn, parent):
        service.start()
        assert service.wait_ready(60)["grpc"] > 0
    pids = started_pids(fake["pids"])
    assert len(pids) == 3  # two services and the controller's own child
    stubborn.stop(grace=1.0)
    parent.stop(grace=5.0)
    assert stubborn.process.returncode == -signal.SIGKILL  # it ignored SIGTERM
    assert wait_gone(pids) == []


def test_a_service_that_dies_at_start_fails_the_run_and_nothing_is_left(
        fake: dict[str, Path], monkeypatch) -> None:
    monkeypatch.setenv("FAKE_MODE_c1", "fail")
    run = embedded(fake)
    with pytest.raises(EmbeddedRunError, match=r"(?s)c1 exited \(code 3\).*ModelNotFoundError"):
        run.run()
    pids = started_pids(fake["pids"])
    assert len(pids) == 5
    assert wait_gone(pids) == []
    status = list_runs(fake["runs"])[0]
    assert status["run_id"] == "r1" and status["state"] == "failed"
    from typer.testing import CliRunner

    from fedmkt.cli import app

    listed = CliRunner().invoke(app, ["runs", "--runs-dir", str(fake["runs"])])
    assert listed.exit_code == 0 and "r1" in listed.output and "failed" in listed.output
    assert (fake["runs"] / "r1" / "logs" / "fedmkt-c1.log").read_text().count("ModelNotFound")


def test_a_failed_start_run_stops_every_service(fake: dict[str, Path], monkeypatch) -> None:
    monkeypatch.setenv("FAKE_STARTRUN", "fail")
    monkeypatch.setenv("FAKE_MODE_llm", "child")
    with pytest.raises(Exception, match="fake controller says no"):
        embedded(fake).run()
    pids = started_pids(fake["pids"])
    assert len(pids) == 6
    assert wait_gone(pids) == []
    # the participants got configs generated from the federation config
    generated = yaml.safe_load((fake["runs"] / "r1" / "fedmkt" / "participants" /
                                "c2.yaml").read_text())
    assert generated["role"] == "client" and generated["data"]["client_index"] == 1
    assert generated["data"]["num_clients"] == 2


def _start_driver(fake: dict[str, Path]) -> subprocess.Popen:
    driver = fake["program"].with_name("driver.py")
    driver.write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    process = subprocess.Popen([sys.executable, str(driver), str(fake["config"]),
                                str(fake["runs"]), str(fake["program"])], env=env)
    deadline = time.monotonic() + 120
    while not (fake["pids"] / "startrun").exists():
        assert process.poll() is None, "the run ended before it started the federation"
        assert time.monotonic() < deadline, "the run never called StartRun"
        time.sleep(0.1)
    return process


def test_sigterm_during_a_run_stops_every_service(fake: dict[str, Path]) -> None:
    process = _start_driver(fake)
    pids = started_pids(fake["pids"])
    assert len(pids) == 5 and all(alive(pid) for pid in pids)
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 130
    assert wait_gone(pids) == []
    assert list_runs(fake["runs"])[0]["state"] == "interrupted"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux")
def test_services_do_not_outlive_a_killed_run_process(fake: dict[str, Path]) -> None:
    process = _start_driver(fake)
    pids = started_pids(fake["pids"])
    process.kill()  # no cleanup code runs in the run process
    process.wait(30)
    assert wait_gone(pids) == []


# ---------------------------------------------------------------------------- the report


def test_report_compares_measured_numbers_and_says_when_fedmkt_did_not_help(
        tmp_path: Path) -> None:
    from fedmkt.config import parse_federation_config
    from fedmkt.federation.fakes import fake_federation
    from fedmkt.federation.manager import RunManager
    from fedmkt.federation.report import RunOutcome, summarize, write_report
    from fedmkt.federation.store import RunStore

    data = {"name": "report-fed", "rounds": 2, "task": {"name": "rte"},
            "participants": [{"name": "llm", "role": "server", "model": "m"},
                             {"name": "c1", "role": "client", "model": "s"}]}
    config = parse_federation_config(yaml.safe_dump(data))
    baseline_config = config.model_copy(update={"transfer": False, "zero_shot": False})
    ablation_config = baseline_config.model_copy(update={"client_public_ce": True})
    store = RunStore(tmp_path / "c.db")
    outcomes = []
    for run_id, cfg in (("fed", config), ("fed-baseline", baseline_config),
                        ("fed-ablation", ablation_config)):
        fakes = fake_federation(cfg)
        manager = RunManager(store, lambda c, f=fakes: f.connections())
        manager.start(cfg.to_yaml(), run_id)
        record = manager.wait(run_id, 60)
        outcomes.append(RunOutcome(run_id, record.state, record.error,
                                   store.events(run_id, limit=100_000), 1.0))
    summary = summarize(config, outcomes[0], outcomes[1], startup_seconds=2.0,
                        total_seconds=5.0, ablation=outcomes[2])
    paths = write_report(tmp_path / "out", summary)

    # Fake accuracy = 0.5 + 0.05 per training step: the client trains and distils in FedMKT
    # (4 steps in 2 rounds) but only trains in the baseline (2 steps); the server distils once
    # a round in both runs, so FedMKT does not beat its public-only baseline.
    rows = {row["participant"]: row for row in summary["comparison"]}
    assert rows["c1"]["zero_shot"] == pytest.approx(0.5)
    assert rows["c1"]["fedmkt"] == pytest.approx(0.7)
    assert rows["c1"]["baseline"] == pytest.approx(0.6)
    # Per sample (20 fake samples, the first 20 × accuracy right): c1's FedMKT run gets 2 more
    # samples right than its baseline, 4 more than zero-shot. Two discordant samples of 20 are
    # not enough for the bootstrap interval to leave zero; four are.
    assert rows["c1"]["vs_baseline"]["verdict"] == "no measurable difference"
    assert rows["c1"]["vs_baseline"]["mean"] == pytest.approx(0.1)
    assert rows["c1"]["vs_baseline"]["low"] == pytest.approx(0.0)
    assert rows["c1"]["vs_baseline"]["n"] == 20
    assert rows["c1"]["vs_zero_shot"]["verdict"] == "helped"
    assert rows["c1"]["vs_zero_shot"]["low"] > 0
    # the ablation: c1 trains and fine-tunes on the public data (4 steps, as in FedMKT)
    assert rows["c1"]["ablation"] == pytest.approx(0.7) and rows["llm"]["ablation"] is None
    assert rows["c1"]["vs_ablation"]["mean"] == 0.0 and "vs_ablation" not in rows["llm"]
    assert rows["llm"]["fedmkt"] == pytest.approx(rows["llm"]["baseline"])
    assert rows["llm"]["vs_baseline"]["verdict"] == "no measurable difference"
    assert rows["llm"]["vs_baseline"]["low"] == rows["llm"]["vs_baseline"]["high"] == 0.0
    assert summary["metric"] == "accuracy"
    report = paths["report"].read_text()
    assert report.index("## Verdict") < report.index("## Results on the held-out split")
    assert ("- **c1** (client, s): FedMKT accuracy 0.700; vs standalone (private only) 0.600: "
            "no measurable difference, +0.100 [+0.000, +0.250] (95 % paired bootstrap, "
            "n = 20); vs private + public CE without KD 0.700: no measurable difference, "
            "+0.000 [+0.000, +0.000] (95 % paired bootstrap, n = 20); vs zero-shot 0.500: "
            "**helped**, +0.200 [") in report
    assert ("| c1 | client | s | 0.500 | 0.600 (standalone (private only)) | 0.700 | 0.700 | "
            "no measurable difference: +0.100 [+0.000, +0.250] | 20 |") in report
    assert "| llm | server | m | 0.500 | 0.600 (public-only fine-tuning) | = baseline |" in report
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"
    saved = json_load(paths["metrics"])
    assert saved["evaluation"]["c1"]["2"]["accuracy"] == pytest.approx(0.7)
    assert 0.0 <= saved["overhead"]["total_round_share"] <= 1.0
    # which teachers each student distilled from, per round
    chosen = {(r["round"], r["participant"]): r for r in summary["selection"]}
    assert chosen[(1, "llm")]["selected"] == {"c1": 1}
    assert chosen[(1, "c1")]["selected"] == {"llm": 1}
    assert chosen[(2, "c1")]["distilled_fraction"] == pytest.approx(0.25)
    # positions projected: the aligner's share on the pipe into that student
    assert "## Knowledge distilled" in report
    assert "| 1 | llm | 4 | 25% | c1 ×1 | 86% | — | — | 0.750 |" in report
    pipes = {(s["round"], s["step"], s["participant"]): s.get("aligned_share")
             for s in summary["steps"]}
    assert chosen[(1, "llm")]["projected_share"] == pipes[(1, "client_knowledge", "c1")]
    assert chosen[(1, "c1")]["projected_share"] == pipes[(1, "server_knowledge", "c1")]
    assert pipes[(1, "client_knowledge", "c1")] != pipes[(1, "server_knowledge", "c1")]


def json_load(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


def test_report_of_a_homogeneous_federation_has_the_fedavg_baseline(tmp_path) -> None:
    from fedmkt.config import parse_federation_config
    from fedmkt.federation.fakes import fake_federation
    from fedmkt.federation.manager import RunManager
    from fedmkt.federation.report import RunOutcome, render_markdown, summarize
    from fedmkt.federation.store import RunStore

    data = {"name": "homog", "rounds": 1, "scenario": "homogeneous", "fedavg": True,
            "task": {"name": "rte"},
            "participants": [{"name": "llm", "role": "server", "model": "m"},
                             {"name": "c1", "role": "client", "model": "s"},
                             {"name": "c2", "role": "client", "model": "s"}]}
    config = parse_federation_config(yaml.safe_dump(data))
    baseline = config.model_copy(update={"transfer": False, "zero_shot": False,
                                         "fedavg": False})
    runs = {"fed": config, "fed-baseline": baseline,
            "fed-fedavg": baseline.model_copy(update={"fedavg": True})}
    store = RunStore(tmp_path / "c.db")
    outcomes = {}
    for run_id, cfg in runs.items():
        fakes = fake_federation(cfg)
        manager = RunManager(store, lambda c, f=fakes: f.connections())
        manager.start(cfg.to_yaml(), run_id)
        record = manager.wait(run_id, 60)
        assert record.state == "succeeded", record.error
        outcomes[run_id] = RunOutcome(run_id, record.state, record.error,
                                      store.events(run_id, limit=100_000), 1.0)
    assert any(s.name == "fedavg" for s in store.completed_steps("fed-fedavg"))
    summary = summarize(config, outcomes["fed"], outcomes["fed-baseline"],
                        fedavg=outcomes["fed-fedavg"])
    rows = {row["participant"]: row for row in summary["comparison"]}
    assert rows["c1"]["fedavg"] is not None and rows["llm"]["fedavg"] is None
    assert rows["c1"]["vs_fedavg"]["n"] == 20 and "vs_fedavg" not in rows["llm"]
    report = render_markdown(summary)
    assert "| FedAvg |" in report and "vs FedAvg" in report
