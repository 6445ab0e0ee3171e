"""Resuming an embedded run with a changed config (issue 10).

Before, ``fedmkt run`` copied the new config over the run folder's ``config.yaml`` first, then
started every service and only the controller's StartRun refused the run, 20 s later, with a
74-line traceback. Now the stored config is compared before anything starts, the error is one
line naming what differs, and the stored config is never replaced.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from services.embedded import EmbeddedRun, EmbeddedRunError
from tests.test_embedded import fake, started_pids  # noqa: F401 - the fixture

__all__ = ["fake"]


def _existing_run(fake: dict[str, Path]) -> Path:  # noqa: F811
    """A run folder as an interrupted ``fedmkt run`` leaves it."""
    folder = fake["runs"] / "r1"
    folder.mkdir(parents=True)
    shutil.copyfile(fake["config"], folder / "config.yaml")
    (folder / "run.json").write_text(json.dumps({"run_id": "r1", "state": "interrupted"}))
    return folder


def _changed(fake: dict[str, Path], **changes) -> Path:  # noqa: F811
    data = yaml.safe_load(fake["config"].read_text())
    data.update(changes)
    path = fake["config"].with_name("changed.yaml")
    path.write_text(yaml.safe_dump(data))
    return path


def _embedded(fake: dict[str, Path], config: Path) -> EmbeddedRun:  # noqa: F811
    return EmbeddedRun(config, runs_dir=fake["runs"], run_id="r1", view=False,
                       command=[sys.executable, str(fake["program"])], stop_grace=2.0,
                       health_timeout=20)


def test_a_changed_config_is_refused_before_any_service_starts(fake) -> None:  # noqa: F811
    folder = _existing_run(fake)
    stored = (folder / "config.yaml").read_text()
    changed = _changed(fake, rounds=2)
    with pytest.raises(EmbeddedRunError) as caught:
        _embedded(fake, changed).run()
    message = str(caught.value)
    assert "\n" not in message and "rounds: 1 -> 2" in message, message
    assert started_pids(fake["pids"]) == []  # nothing was started
    assert (folder / "config.yaml").read_text() == stored  # and nothing overwritten


def test_the_cli_says_it_in_one_line(fake) -> None:  # noqa: F811
    from fedmkt.cli import app

    _existing_run(fake)
    participants = yaml.safe_load(fake["config"].read_text())["participants"]
    participants[1]["model"] = "tiny-neox"
    changed = _changed(fake, participants=participants)
    result = CliRunner().invoke(app, ["run", str(changed), "--runs-dir", str(fake["runs"]),
                                      "--run-id", "r1"])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "participants[1].model" in lines[0] and "Traceback" not in result.output


def test_fields_a_resume_may_change_pass_the_check(fake) -> None:  # noqa: F811
    folder = _existing_run(fake)
    changed = _changed(fake, deadlines={"train_local": 60}, quorum={"min_clients": 1})
    _embedded(fake, changed).check_resumable(folder / "config.yaml")  # no error
