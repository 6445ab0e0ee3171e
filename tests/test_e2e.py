"""End to end: ``fedmkt run`` of a two-round federation with tiny models, every service a real
process on loopback (aligner, controller, one server, two clients), then the baseline run on
fresh participant processes, then the report. Slow (a minute or two on two cores)."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from fedmkt.config import load_federation_config
from fedmkt.federation.plan import ROUND_DONE, build_plan
from fedmkt.federation.store import RunStore
from services.embedded import EmbeddedRun

pytestmark = pytest.mark.slow

CONFIG = {
    "name": "e2e-tiny",
    "seed": 3,
    "rounds": 2,
    "task": {"name": "rte", "max_public": 12, "max_private": 12, "max_eval": 12,
             "max_length": 64},
    "knowledge": {"top_k": 8},
    "deadlines": {"default": 300},
    "participants": [
        {"name": "llm", "role": "server", "model": "tiny-smollm2", "threads": 1},
        {"name": "c-gpt2", "role": "client", "model": "tiny-gpt2", "learning_rate": 1e-3,
         "threads": 1},
        {"name": "c-neox", "role": "client", "model": "tiny-neox", "learning_rate": 1e-3,
         "threads": 1},
    ],
}


def service_children() -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "serve" in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One undisturbed run (FedMKT + baseline) shared by the tests of this module."""
    root = tmp_path_factory.mktemp("e2e")
    config_path = root / "fed.yaml"
    config_path.write_text(yaml.safe_dump(CONFIG))
    run = EmbeddedRun(config_path, runs_dir=root / "runs", run_id="e2e", view=False)
    return config_path, run.run()


def test_two_rounds_through_real_processes(reference: tuple[Path, dict]) -> None:
    config_path, summary = reference
    run_dir = config_path.parent / "runs" / "e2e"

    assert summary["state"] == "succeeded", summary["error"]
    assert summary["baseline_state"] == "succeeded", summary["baseline_error"]
    assert not service_children()  # every service process was stopped

    # every step of the plan is recorded as done in the controller's store
    store = RunStore(run_dir / "controller" / "controller.db")
    config = load_federation_config(config_path)
    done = store.completed_steps("e2e")
    assert set(build_plan(config).steps) <= set(done)
    assert {s.round for s in done if s.name == ROUND_DONE} == {0, 1, 2}
    knowledge = [r for s, r in done.items() if s.name in ("client_knowledge",
                                                          "server_knowledge")]
    assert len(knowledge) == 8
    assert all(r.metrics["samples"] == 12 and len(r.artefacts["digest"]) == 64
               for r in knowledge)
    assert all(0.0 < r.metrics["aligned_share"] <= 1.0 for r in knowledge)
    baseline_steps = store.completed_steps("e2e-baseline")
    assert not any(s.name.endswith("_knowledge") for s in baseline_steps)
    assert store.get_run("e2e-baseline").kind == "baseline"

    # the report: every comparison number measured, plot, metrics, adapters
    table = {row["participant"]: row for row in summary["comparison"]}
    assert set(table) == {"llm", "c-gpt2", "c-neox"}
    for row in table.values():
        for column in ("zero_shot", "baseline", "fedmkt"):
            assert row[column] is not None and 0.0 <= row[column] <= 1.0
    report = (run_dir / "report.md").read_text()
    assert "| llm | server | tiny-smollm2 |" in report and "outside model compute" in report
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["evaluation"]["c-gpt2"].keys() == {"0", "1", "2"}
    assert (run_dir / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("llm", "c-gpt2", "c-neox"):
        adapter = summary["adapters"][name]
        assert adapter["round"] == 2
        data = (run_dir / adapter["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == adapter["digest"]
        config = json.loads((run_dir / adapter["folder"] / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA" and adapter["base_model"]  # a PEFT folder
    status = json.loads((run_dir / "run.json").read_text())
    assert status["state"] == "succeeded" and status["baseline_state"] == "succeeded"


def test_an_interrupted_run_resumes_to_the_same_adapters(reference: tuple[Path, dict],
                                                         tmp_path: Path) -> None:
    """SIGTERM the whole embedded run after the server's first distillation, start it again
    with the same run id: the controller resumes from its store, the participants from their
    state, and the final adapters are bit for bit those of the undisturbed run."""
    config_path, summary = reference
    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "fedmkt", "run", str(config_path), "--runs-dir", str(runs),
               "--run-id", "e2e", "--no-baselines"]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    events = runs / "e2e" / "events.jsonl"
    deadline = time.monotonic() + 240
    while not _distilled(events, "llm", 1):
        assert first.poll() is None, "the run ended before it was interrupted"
        assert time.monotonic() < deadline, "the server's round-1 distillation never finished"
        time.sleep(0.2)
    first.send_signal(signal.SIGTERM)
    assert first.wait(120) == 130
    assert json.loads((runs / "e2e" / "run.json").read_text())["state"] == "interrupted"
    assert not service_children()

    resumed = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    store = RunStore(runs / "e2e" / "controller" / "controller.db")
    starts = [e.message for e in store.events("e2e", limit=100_000) if e.kind == "run_started"]
    assert starts[0] == "started" and starts[1].startswith("resumed after")
    after = json.loads((runs / "e2e" / "metrics.json").read_text())["adapters"]
    for name, adapter in summary["adapters"].items():
        assert after[name]["digest"] == adapter["digest"], name


def _distilled(events: Path, participant: str, round_index: int) -> bool:
    if not events.exists():
        return False
    for line in events.read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        if (event["kind"], event["step"], event["participant"], event["round"]) == (
                "step_finished", "distill", participant, round_index):
            return True
    return False
