"""Adapters: atomic per-round saves, crash leftovers ignored, bytes round trip, validation,
FedAvg."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save
from transformers import AutoModelForCausalLM

from fedmkt.errors import InvalidArgument, NotFound, ResourceExhausted
from fedmkt.models.adapters import (
    AdapterMismatch,
    adapter_bytes,
    adapter_from_bytes,
    adapter_state_dict,
    fedavg,
    latest_adapter,
    list_adapters,
    load_adapter_into,
    round_dir,
    save_adapter,
    state_dict_from_bytes,
    state_dict_to_bytes,
)
from fedmkt.models.lora import LoraSettings, apply_lora
from fedmkt.models.tiny import TINY_MODELS

VOCAB = 96
IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}


def _peft(arch: str = "tiny-smollm2", r: int = 4, seed: int = 0):
    """A tiny LoRA model; ``seed`` also randomizes lora_B so adapters differ from zero."""
    torch.manual_seed(0)  # same base weights for every call
    model = AutoModelForCausalLM.from_config(TINY_MODELS[arch].make_config(VOCAB, IDS))
    torch.manual_seed(seed)
    peft_model = apply_lora(model, LoraSettings(r=r, dropout=0.0))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, 0.05)
    peft_model.eval()
    return peft_model


def _ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(7))


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=_ids()).logits


def _lora(model) -> dict[str, torch.Tensor]:
    return adapter_state_dict(model)


def test_round_dir_naming(tmp_path: Path) -> None:
    assert round_dir(tmp_path, 3) == tmp_path / "adapters" / "round-0003"
    assert round_dir(tmp_path, 12345).name == "round-12345"
    with pytest.raises(InvalidArgument):
        round_dir(tmp_path, -1)


def test_save_then_load_latest_into_a_fresh_model(tmp_path: Path) -> None:
    trained = _peft(seed=1)
    save_adapter(_peft(seed=5), tmp_path, 1)
    path = save_adapter(trained, tmp_path, 2)
    assert (path / "adapter_model.safetensors").is_file()
    assert latest_adapter(tmp_path) == (2, path)
    fresh = _peft(seed=2)
    assert not torch.allclose(_logits(fresh), _logits(trained))
    load_adapter_into(fresh, latest_adapter(tmp_path)[1])
    assert torch.allclose(_logits(fresh), _logits(trained), atol=1e-6)


def test_no_adapter_yet(tmp_path: Path) -> None:
    assert latest_adapter(tmp_path) is None
    with pytest.raises(NotFound):
        adapter_bytes(tmp_path / "adapters" / "round-0001")


def test_leftovers_of_a_crash_are_never_the_latest(tmp_path: Path) -> None:
    model = _peft(seed=1)
    save_adapter(model, tmp_path, 1)
    root = tmp_path / "adapters"
    # A writer killed mid-save leaves its temporary folder, possibly with a partial file.
    partial = root / ".tmp-0123456789ab-round-0002"
    partial.mkdir()
    (partial / "adapter_model.safetensors").write_bytes(b"\x00\x01 half written")
    # Anything that looks like a round but is not whole is ignored as well.
    (root / "round-0003").mkdir()
    (root / "round-0003" / "adapter_config.json").write_text("{}")
    (root / "round-9").mkdir()  # not our naming
    assert [r for r, _ in list_adapters(tmp_path)] == [1]
    assert latest_adapter(tmp_path)[0] == 1
    # The next save removes the leftover of the same round and publishes a whole adapter.
    save_adapter(model, tmp_path, 2)
    assert not partial.exists()
    assert latest_adapter(tmp_path)[0] == 2


def test_an_exception_during_save_publishes_nothing(tmp_path: Path, monkeypatch) -> None:
    model = _peft(seed=1)
    save_adapter(model, tmp_path, 1)

    def crash(folder: str, **_kwargs) -> None:
        Path(folder, "adapter_model.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(model, "save_pretrained", crash)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(model, tmp_path, 2)
    assert latest_adapter(tmp_path)[0] == 1
    assert [p.name for p in (tmp_path / "adapters").iterdir()] == ["round-0001"]


def test_saving_a_round_again_replaces_it(tmp_path: Path) -> None:
    save_adapter(_peft(seed=1), tmp_path, 4)
    second = _peft(seed=2)
    path = save_adapter(second, tmp_path, 4)
    fresh = _peft(seed=3)
    load_adapter_into(fresh, path)
    assert torch.allclose(_logits(fresh), _logits(second), atol=1e-6)
    assert [p.name for p in (tmp_path / "adapters").iterdir()] == ["round-0004"]


def test_bytes_round_trip(tmp_path: Path) -> None:
    source = _peft(arch="tiny-gpt2", seed=1)
    data = adapter_bytes(save_adapter(source, tmp_path, 0))
    assert data == (round_dir(tmp_path, 0) / "adapter_model.safetensors").read_bytes()
    target = _peft(arch="tiny-gpt2", seed=2)
    adapter_from_bytes(target, data)
    for name, tensor in _lora(source).items():
        assert torch.equal(_lora(target)[name], tensor)
    assert torch.allclose(_logits(target), _logits(source), atol=1e-6)


def test_adapter_of_another_architecture_is_rejected() -> None:
    data = state_dict_to_bytes(_lora(_peft(arch="tiny-gpt2")))
    target = _peft(arch="tiny-smollm2", seed=1)
    before = _lora(target)
    with pytest.raises(AdapterMismatch, match="missing"):
        adapter_from_bytes(target, data)
    for name, tensor in _lora(target).items():  # nothing was loaded
        assert torch.equal(tensor, before[name])


def test_adapter_of_another_rank_is_rejected() -> None:
    data = state_dict_to_bytes(_lora(_peft(r=8)))
    with pytest.raises(AdapterMismatch, match="shape"):
        adapter_from_bytes(_peft(r=4), data)


def test_extra_tensor_is_rejected() -> None:
    state = _lora(_peft())
    state["base_model.model.lm_head.weight"] = torch.zeros(VOCAB, 64)
    with pytest.raises(AdapterMismatch, match="unexpected"):
        adapter_from_bytes(_peft(), state_dict_to_bytes(state))


def test_bad_payloads_are_rejected() -> None:
    model = _peft()
    state = _lora(model)
    name = next(iter(state))
    with pytest.raises(InvalidArgument, match="safetensors"):
        adapter_from_bytes(model, b"definitely not safetensors")
    nan_state = dict(state, **{name: torch.full_like(state[name], float("nan"))})
    with pytest.raises(InvalidArgument, match="NaN"):
        adapter_from_bytes(model, state_dict_to_bytes(nan_state))
    int_state = dict(state, **{name: torch.zeros(state[name].shape, dtype=torch.int32)})
    with pytest.raises(InvalidArgument, match="dtype"):
        adapter_from_bytes(model, state_dict_to_bytes(int_state))
    with pytest.raises(InvalidArgument, match="no tensors"):
        state_dict_from_bytes(save({}))
    with pytest.raises(ResourceExhausted):
        state_dict_from_bytes(state_dict_to_bytes(state), max_bytes=100)


def test_bfloat16_adapter_loads_into_float32_model() -> None:
    source = _peft(seed=1)
    data = state_dict_to_bytes({k: v.to(torch.bfloat16) for k, v in _lora(source).items()})
    target = _peft(seed=2)
    adapter_from_bytes(target, data)
    for name, tensor in _lora(source).items():
        assert torch.equal(_lora(target)[name], tensor.to(torch.bfloat16).to(torch.float32))


def test_fedavg_weighted_mean() -> None:
    a, b = _lora(_peft(seed=1)), _lora(_peft(seed=2))
    averaged = fedavg([a, b], [1.0, 3.0])
    assert set(averaged) == set(a)
    for name in a:
        assert torch.allclose(averaged[name], 0.25 * a[name] + 0.75 * b[name], atol=1e-7)
    equal = fedavg([a, b])
    for name in a:
        assert torch.allclose(equal[name], (a[name] + b[name]) / 2, atol=1e-7)
    # The average is a valid adapter for the same model.
    model = _peft(seed=3)
    adapter_from_bytes(model, state_dict_to_bytes(averaged))
    assert torch.allclose(_lora(model)[next(iter(a))], averaged[next(iter(a))])


def test_fedavg_keeps_dtype_and_one_adapter_is_itself() -> None:
    a = {k: v.to(torch.bfloat16) for k, v in _lora(_peft(seed=1)).items()}
    single = fedavg([a], [2.0])
    for name, tensor in a.items():
        assert single[name].dtype == torch.bfloat16
        assert torch.equal(single[name], tensor)


def test_fedavg_rejects_mismatches_and_bad_weights() -> None:
    a, b = _lora(_peft(r=4, seed=1)), _lora(_peft(r=8, seed=2))
    with pytest.raises(AdapterMismatch, match="shape"):
        fedavg([a, b])
    with pytest.raises(AdapterMismatch, match="names"):
        fedavg([a, _lora(_peft(arch="tiny-gpt2"))])
    for weights in ([1.0], [1.0, -1.0], [0.0, 0.0], [float("nan"), 1.0]):
        with pytest.raises(InvalidArgument):
            fedavg([a, a], weights)
    with pytest.raises(InvalidArgument):
        fedavg([])


def test_pickle_adapters_are_never_read(tmp_path: Path) -> None:
    folder = tmp_path / "adapters" / "round-0001"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    torch.save(_lora(_peft()), folder / "adapter_model.bin")  # the legacy pickle format
    assert latest_adapter(tmp_path) is None
    with pytest.raises(NotFound):
        load_adapter_into(_peft(), folder)


def test_a_fetched_adapter_becomes_a_peft_folder_that_peft_opens(tmp_path: Path) -> None:
    from peft import PeftModel

    from fedmkt.models.adapters import check_peft_config, peft_folder_texts, write_peft_folder

    trained = _peft(seed=3)
    saved = save_adapter(trained, tmp_path / "state", 1)
    config, base = peft_folder_texts(saved)  # what FetchAdapter sends with the bytes
    assert check_peft_config(config)["peft_type"] == "LORA"
    out = write_peft_folder(tmp_path / "run" / "adapters" / "c1", adapter_bytes(saved), config,
                            base)
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "fedmkt_adapter.json"]
    torch.manual_seed(0)
    base_model = AutoModelForCausalLM.from_config(TINY_MODELS["tiny-smollm2"].make_config(
        VOCAB, IDS))
    opened = PeftModel.from_pretrained(base_model, str(out)).eval()
    assert torch.allclose(_logits(opened), _logits(trained), atol=1e-6)
    # what a participant must not send is refused, and nothing is written
    bad = tmp_path / "run" / "adapters" / "bad"
    for data, text, match in ((adapter_bytes(saved), "{}", "peft_type LORA"),
                              (adapter_bytes(saved), "not json", "not JSON"),
                              (adapter_bytes(saved), " " * (65 * 1024), "larger than"),
                              (b"pickle?", config, "safetensors")):
        with pytest.raises(InvalidArgument, match=match):
            write_peft_folder(bad, data, text)
    assert not bad.exists()
