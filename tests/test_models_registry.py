"""Builtin registry and atomic folders: built once, never half, under a lock; the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedmkt.models import registry
from fedmkt.models.atomic import atomic_folder, is_temporary, remove_temporaries
from fedmkt.models.cli import app
from fedmkt.models.registry import BuiltinModel, ModelNotFoundError, builtin_model_path


def test_atomic_folder_publishes_only_on_success(tmp_path: Path) -> None:
    final = tmp_path / "thing"
    with pytest.raises(RuntimeError), atomic_folder(final) as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("killed")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    with atomic_folder(final) as tmp:
        (tmp / "whole").write_text("1")
    assert (final / "whole").read_text() == "1"


def test_atomic_folder_keep_or_replace(tmp_path: Path) -> None:
    final = tmp_path / "thing"
    with atomic_folder(final) as tmp:
        (tmp / "v").write_text("1")
    with atomic_folder(final) as tmp:  # someone else finished first: theirs is kept
        (tmp / "v").write_text("2")
    assert (final / "v").read_text() == "1"
    with atomic_folder(final, replace=True) as tmp:
        (tmp / "v").write_text("3")
    assert (final / "v").read_text() == "3"
    assert [p.name for p in tmp_path.iterdir()] == ["thing"]


def test_remove_temporaries_only_touches_leftovers_of_that_name(tmp_path: Path) -> None:
    (tmp_path / ".tmp-aaaaaaaaaaaa-round-0001").mkdir()
    (tmp_path / ".tmp-bbbbbbbbbbbb-round-0002").mkdir()
    (tmp_path / "round-0001").mkdir()
    removed = remove_temporaries(tmp_path, "round-0001")
    assert [p.name for p in removed] == [".tmp-aaaaaaaaaaaa-round-0001"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".tmp-bbbbbbbbbbbb-round-0002", "round-0001"]
    assert is_temporary(tmp_path / ".tmp-bbbbbbbbbbbb-round-0002")


@pytest.fixture
def fake_builtin(tmp_path: Path, monkeypatch) -> dict:
    """A builtin whose builder counts its calls and can be told to fail half-way."""
    monkeypatch.setenv("FEDMKT_HOME", str(tmp_path))
    calls = {"n": 0, "fail": False}

    def build(name: str, dest: Path) -> None:
        calls["n"] += 1
        (dest / "config.json").write_text(json.dumps({"name": name}))
        if calls["fail"]:
            raise RuntimeError("conversion crashed")
        (dest / "model.safetensors").write_bytes(b"weights")

    fake = BuiltinModel("fake-model", "tiny", "gpt2", "a fake", build)
    monkeypatch.setitem(registry.BUILTIN_MODELS, "fake-model", fake)
    return calls


def test_builtin_is_built_once(fake_builtin: dict, tmp_path: Path) -> None:
    path = builtin_model_path("fake-model")
    assert path == tmp_path / "models" / "fake-model"
    assert registry.is_complete(path)
    assert builtin_model_path("fake-model") == path
    assert fake_builtin["n"] == 1


def test_failed_build_leaves_nothing_and_next_call_builds(fake_builtin: dict,
                                                          tmp_path: Path) -> None:
    fake_builtin["fail"] = True
    with pytest.raises(RuntimeError, match="crashed"):
        builtin_model_path("fake-model")
    models = tmp_path / "models"
    assert not (models / "fake-model").exists()
    assert not [p for p in models.iterdir() if p.is_dir()]
    fake_builtin["fail"] = False
    assert registry.is_complete(builtin_model_path("fake-model"))


def test_incomplete_final_folder_is_rebuilt(fake_builtin: dict, tmp_path: Path) -> None:
    stale = tmp_path / "models" / "fake-model"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")  # e.g. copied by hand, weights missing
    assert builtin_model_path("fake-model", build=False) == stale
    path = builtin_model_path("fake-model")
    assert (path / "model.safetensors").read_bytes() == b"weights"
    assert fake_builtin["n"] == 1


def test_unknown_builtin() -> None:
    with pytest.raises(ModelNotFoundError, match="tiny-gpt2"):
        builtin_model_path("tiny-gpt5")


def test_every_builtin_names_a_builtin_tokenizer() -> None:
    from fedmkt.models.tokenizers import BUILTIN_TOKENIZERS

    assert {"tiny-gpt2", "tiny-mistral", "tiny-neox", "tiny-smollm2", "smollm2-135m",
            "gemma3-270m"} <= set(registry.BUILTIN_MODELS)
    for model in registry.BUILTIN_MODELS.values():
        assert model.tokenizer in BUILTIN_TOKENIZERS


def test_cli_list_and_path(fake_builtin: dict, tmp_path: Path) -> None:
    runner = CliRunner()
    listed = runner.invoke(app, ["list"])
    assert listed.exit_code == 0
    assert "tiny-gpt2" in listed.output and "smollm2-135m" in listed.output
    assert "fake-model" in listed.output and "built on first use" in listed.output
    shown = runner.invoke(app, ["path", "fake-model"])
    assert shown.exit_code == 0
    assert shown.output.strip() == str(tmp_path / "models" / "fake-model")
    line = [x for x in runner.invoke(app, ["list"]).output.splitlines() if "fake-model" in x]
    assert line and line[0].endswith("[ready]")
    missing = runner.invoke(app, ["path", "no-such-model"])
    assert missing.exit_code == 2
    assert "unknown builtin model" in missing.output
