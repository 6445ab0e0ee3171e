"""``fedmkt run`` / ``fedmkt runs`` around an interrupted run (issue 10): the Ctrl-C hint keeps
``--runs-dir``, and a run whose process is gone shows as interrupted, not running for ever."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from fedmkt.cli import app
from services.embedded import EmbeddedRun, list_runs


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _status(folder: Path, **values) -> Path:
    folder.mkdir(parents=True)
    path = folder / "run.json"
    path.write_text(json.dumps({"run_id": folder.name, "started_at": 1.0, **values}))
    return path


def test_a_run_whose_process_is_gone_is_listed_as_interrupted(tmp_path: Path) -> None:
    dead = _status(tmp_path / "dead", state="running fedmkt", pid=_dead_pid())
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        _status(tmp_path / "alive", state="running baseline", pid=sleeper.pid)
        _status(tmp_path / "done", state="succeeded", pid=_dead_pid())
        states = {s["run_id"]: s["state"] for s in list_runs(tmp_path)}
        assert states == {"dead": "interrupted", "alive": "running baseline",
                          "done": "succeeded"}
        stored = json.loads(dead.read_text())
        assert stored["state"] == "interrupted" and "is gone" in stored["error"]
        listed = CliRunner().invoke(app, ["runs", "--runs-dir", str(tmp_path)])
        assert listed.exit_code == 0
        line = next(x for x in listed.output.splitlines() if x.startswith("dead"))
        assert "interrupted" in line and "running" not in line
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_ctrl_c_hint_keeps_the_runs_dir(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "fed.yaml"
    config.write_text(yaml.safe_dump({
        "name": "hint-test", "rounds": 1, "task": {"name": "rte"},
        "participants": [{"name": "llm", "role": "server", "model": "tiny-mistral"},
                         {"name": "c1", "role": "client", "model": "tiny-gpt2"}]}))

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(EmbeddedRun, "run", interrupted)
    runs = tmp_path / "my runs"
    result = CliRunner().invoke(app, ["run", str(config), "--runs-dir", str(runs),
                                      "--run-id", "r1"])
    assert result.exit_code == 130
    assert f"--runs-dir '{runs}' --run-id r1" in result.output, result.output
