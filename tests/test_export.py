"""PEFT folders and `fedmkt export`: a saved round opens with PeftModel.from_pretrained and gives
the in-memory model's logits; the merged checkpoint loads with AutoModelForCausalLM and
AutoTokenizer and gives base + adapter's logits; run folders, base-model lookup, error cases."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast
from typer.testing import CliRunner

from fedmkt.cli import app
from fedmkt.errors import FailedPrecondition, InvalidArgument, NotFound
from fedmkt.models import registry
from fedmkt.models.adapters import (
    CONFIG_FILE,
    INFO_FILE,
    AdapterMismatch,
    round_dir,
    save_adapter,
)
from fedmkt.models.export import (
    EXPORT_INFO_FILE,
    export_merged,
    export_run_adapter,
    find_run_adapter,
)
from fedmkt.models.loading import load_model
from fedmkt.models.lora import LoraSettings, apply_lora
from fedmkt.models.tiny import TINY_MODELS

VOCAB = 96
IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
ARCHS = ["tiny-smollm2", "tiny-gpt2"]  # Linear layers; GPT-2 Conv1D (fan_in_fan_out)


def _checkpoint(folder: Path, arch: str, **overrides) -> Path:
    """A tiny checkpoint folder (config, safetensors, word-level tokenizer) built from config."""
    words = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i for i in range(3, VOCAB)}
    backend = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>",
                                        bos_token="<s>", eos_token="</s>")
    config = TINY_MODELS[arch].make_config(VOCAB, IDS)
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    found = {arch: _checkpoint(root / arch, arch) for arch in ARCHS}
    # same architecture and names as tiny-smollm2, other k/v shapes: the adapter cannot fit
    found["other-llama"] = _checkpoint(root / "other-llama", "tiny-smollm2",
                                       num_key_value_heads=4)
    return found


def _trained(base_dir: Path, seed: int = 1):
    """A LoRA model on ``base_dir`` (loaded by our loader) with non-zero A and B."""
    base, _ = load_model(str(base_dir), device="cpu")
    torch.manual_seed(seed)
    peft_model = apply_lora(base, LoraSettings(r=4, dropout=0.0))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, 0.2)
    peft_model.eval()
    return peft_model


def _ids() -> torch.Tensor:
    return torch.randint(3, VOCAB, (2, 10), generator=torch.Generator().manual_seed(7))


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=_ids()).logits.float()


@pytest.fixture(scope="module", params=ARCHS)
def saved(request, bases, tmp_path_factory) -> tuple[str, Path, torch.Tensor]:
    """(arch, round folder, logits of the in-memory LoRA model)."""
    arch = request.param
    peft_model = _trained(bases[arch])
    folder = save_adapter(peft_model, tmp_path_factory.mktemp("state"), 3)
    return arch, folder, _logits(peft_model)


# --------------------------------------------------------------------------- PEFT folder


def test_a_saved_round_opens_with_peft_and_gives_the_same_logits(saved, bases) -> None:
    arch, folder, expected = saved
    base, _ = load_model(str(bases[arch]), device="cpu")
    plain = _logits(base)
    assert not torch.allclose(plain, expected, atol=1e-3)  # the adapter changes the output
    reopened = PeftModel.from_pretrained(base, str(folder))
    torch.testing.assert_close(_logits(reopened), expected, rtol=0, atol=1e-6)

    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["base_model_name_or_path"] == str(bases[arch].resolve())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["fan_in_fan_out"] == (arch == "tiny-gpt2")
    info = json.loads((folder / INFO_FILE).read_text())
    assert info["base_model"] == str(bases[arch].resolve())


def test_a_builtin_base_is_recorded_by_name(bases, tmp_path, monkeypatch) -> None:
    """A base that is a builtin's cache folder is recorded as the builtin name, and export finds
    it by that name where the recorded cache path does not exist (another machine)."""
    root = tmp_path / "cache-models"
    shutil.copytree(bases["tiny-gpt2"], root / "tiny-gpt2")
    monkeypatch.setattr(registry, "models_root", lambda: root)
    peft_model = _trained(root / "tiny-gpt2")
    folder = save_adapter(peft_model, tmp_path / "state", 1)
    assert json.loads((folder / INFO_FILE).read_text())["base_model"] == "tiny-gpt2"

    config = json.loads((folder / CONFIG_FILE).read_text())
    config["base_model_name_or_path"] = "/elsewhere/cache/models/tiny-gpt2"
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    result = export_merged(folder, tmp_path / "out")
    assert result.base_model == "tiny-gpt2"
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    torch.testing.assert_close(_logits(merged), _logits(peft_model), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- export


def test_export_writes_a_checkpoint_that_transformers_loads(saved, tmp_path) -> None:
    arch, folder, expected = saved
    out = tmp_path / "merged"
    result = export_merged(folder, out)
    assert result.out_dir == out and out.is_dir()
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", EXPORT_INFO_FILE} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl"))]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries
    mask = os.umask(0)
    os.umask(mask)
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask

    merged = AutoModelForCausalLM.from_pretrained(str(out))
    assert not any("lora" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged), expected, rtol=1e-4, atol=1e-5)
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer("w5 w7").input_ids == [5, 7]
    assert tokenizer.eos_token == "</s>" and tokenizer.pad_token is not None
    info = json.loads((out / EXPORT_INFO_FILE).read_text())
    assert info["adapter"] == str(folder.resolve()) and info["lora"]["r"] == 4


def test_export_in_bfloat16(saved, tmp_path) -> None:
    arch, folder, expected = saved
    export_merged(folder, tmp_path / "bf16", dtype="bfloat16")
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "bf16"), dtype="auto")
    assert merged.dtype == torch.bfloat16
    torch.testing.assert_close(_logits(merged), expected, rtol=0.05, atol=0.05)


def test_an_existing_output_is_kept_unless_forced(saved, tmp_path) -> None:
    _, folder, _ = saved
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(FailedPrecondition, match="--force"):
        export_merged(folder, out)
    assert (out / "mine.txt").read_text() == "keep"
    export_merged(folder, out, force=True)
    assert not (out / "mine.txt").exists() and (out / "config.json").is_file()
    with pytest.raises(InvalidArgument, match="own input"):  # never replaces its input
        export_merged(folder, folder.parent, force=True)
    assert (folder / CONFIG_FILE).is_file()


def test_missing_partial_and_malformed_adapters(saved, tmp_path) -> None:
    _, folder, _ = saved
    with pytest.raises(NotFound, match="no adapter folder"):
        export_merged(tmp_path / "nowhere", tmp_path / "out")
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(folder / CONFIG_FILE, partial / CONFIG_FILE)
    with pytest.raises(NotFound, match="adapter_model.safetensors missing"):
        export_merged(partial, tmp_path / "out")
    with pytest.raises(NotFound, match="rounds 3: give one round folder"):
        export_merged(folder.parent, tmp_path / "out")  # the adapters/ folder, not a round
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InvalidArgument, match="not a valid safetensors"):
        export_merged(broken, tmp_path / "out")
    (broken / CONFIG_FILE).write_text("{")
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        export_merged(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_adapter_that_does_not_fit_the_model(saved, bases, tmp_path) -> None:
    arch, folder, _ = saved
    other = "tiny-gpt2" if arch == "tiny-smollm2" else "tiny-smollm2"
    with pytest.raises(AdapterMismatch, match="does not fit"):  # other target modules
        export_merged(folder, tmp_path / "out", model=str(bases[other]))
    if arch == "tiny-smollm2":
        with pytest.raises(AdapterMismatch, match="size mismatch"):  # same names, other shapes
            export_merged(folder, tmp_path / "out", model=str(bases["other-llama"]))
    with pytest.raises(InvalidArgument, match="no checkpoint folder"):
        export_merged(folder, tmp_path / "out", model=str(tmp_path / "no-model"))
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- run folders


@pytest.fixture
def run_dir(bases, tmp_path) -> Path:
    """A `fedmkt run` folder: one participant with rounds 1 and 2 (rounds differ)."""
    run = tmp_path / "runs" / "r1"
    participants = run / "fedmkt" / "participants"
    participants.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"run_id": "r1", "state": "succeeded"}))
    (participants / "client-1.yaml").write_text(yaml.safe_dump(
        {"name": "client-1", "model": str(bases["tiny-smollm2"])}))
    state = run / "fedmkt" / "state" / "client-1" / "runs" / "r1"
    for round_index in (1, 2):
        save_adapter(_trained(bases["tiny-smollm2"], seed=round_index), state, round_index)
    return run


def test_a_run_adapter_is_found_and_exported(run_dir, bases, tmp_path) -> None:
    found = find_run_adapter("r1", "client-1", runs_dir=run_dir.parent)
    assert (found.round, found.run_id) == (2, "r1") and found.model == str(bases["tiny-smollm2"])
    assert find_run_adapter(run_dir, "client-1", round_index=1).round == 1
    with pytest.raises(NotFound, match="participants: client-1"):
        find_run_adapter(run_dir, "server")
    with pytest.raises(NotFound, match="rounds: 1, 2"):
        find_run_adapter(run_dir, "client-1", round_index=5)
    with pytest.raises(NotFound, match="baseline"):
        find_run_adapter(run_dir, "client-1", baseline=True)
    with pytest.raises(NotFound, match="no run"):
        find_run_adapter("r2", "client-1", runs_dir=run_dir.parent)

    # The adapter names no base found here: the participant's configured model is used.
    folder = found.folder
    (folder / INFO_FILE).unlink()
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["base_model_name_or_path"] = "/elsewhere/model"
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    result = export_run_adapter(run_dir, "client-1", tmp_path / "final")
    assert result.adapter_dir == round_dir(folder.parents[1], 2)
    info = json.loads((tmp_path / "final" / EXPORT_INFO_FILE).read_text())
    assert (info["run"], info["participant"], info["round"]) == ("r1", "client-1", 2)
    reference = PeftModel.from_pretrained(load_model(str(bases["tiny-smollm2"]),
                                                     device="cpu")[0], str(folder))
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "final"))
    torch.testing.assert_close(_logits(merged), _logits(reference), rtol=1e-4, atol=1e-5)


def test_the_command_line(run_dir, tmp_path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli-out"
    args = ["export", str(out), "--run", "r1", "--participant", "client-1", "--round", "1",
            "--runs-dir", str(run_dir.parent)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "exported" in result.output and (out / "model.safetensors").is_file()
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--force" in again.output
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0
    adapter = str(round_dir(run_dir / "fedmkt/state/client-1/runs/r1", 2))
    assert runner.invoke(app, ["export", str(tmp_path / "b"), "--adapter", adapter]
                         ).exit_code == 0
    for bad in (["export", str(tmp_path / "c")],
                ["export", str(tmp_path / "c"), "--adapter", adapter, "--run", "r1"],
                ["export", str(tmp_path / "c"), "--run", "r1"],
                ["export", str(tmp_path / "c"), "--adapter", adapter, "--round", "1"]):
        result = runner.invoke(app, bad)
        assert result.exit_code == 2 and "error:" in result.output, bad
    missing = runner.invoke(app, ["export", str(tmp_path / "c"), "--adapter", str(tmp_path)])
    assert missing.exit_code == 2 and "not a whole PEFT adapter folder" in missing.output
