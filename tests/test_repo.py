"""Repository hygiene that CI must enforce: fresh generated stubs, ruff-clean code, no pickle."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_stubs_are_up_to_date() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_clean() -> None:
    ruff = Path(sys.executable).with_name("ruff")
    result = subprocess.run([str(ruff), "check", "."], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_pickle_anywhere() -> None:
    pattern = re.compile(
        r"^\s*(import pickle|from pickle|import dill|import cloudpickle)|torch\.load\((?![^)]*"
        r"weights_only=True)|allow_pickle=True", re.MULTILINE)
    offenders = []
    for path in [*ROOT.glob("fedmkt/**/*.py"), *ROOT.glob("services/**/*.py")]:
        if "/wire/v1/" in str(path):
            continue
        if pattern.search(path.read_text()):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
