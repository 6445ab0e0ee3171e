"""The on-disk vocab map cache: round trip, atomic writes, corrupt entries, bad fingerprints."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

import fedmkt.align.cache as cache_module
from fedmkt.align.cache import VocabMapCache
from fedmkt.align.canonical import CanonicalMode
from fedmkt.align.vocab_map import build_vocab_map, vocab_map_for

SRC, TGT = "a" * 64, "b" * 64


def small_map(n: int = 50, target_size: int = 20) -> np.ndarray:
    return (np.arange(n, dtype=np.int32) * 7) % target_size


def word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(["<unk>", *words])}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")), unk_token="<unk>"
    )


def test_round_trip(tmp_path: Path) -> None:
    cache = VocabMapCache(tmp_path / "maps")
    assert cache.get(SRC, TGT, "surface") is None
    array = small_map()
    cache.put(SRC, TGT, CanonicalMode.SURFACE, array, {"target_size": 20, "exact_matches": 3})
    got = cache.get(SRC, TGT, "surface", source_size=50, target_size=20)
    assert got is not None and got.dtype == np.int32 and np.array_equal(got, array)
    assert cache.get(SRC, TGT, CanonicalMode.FATE) is None  # another mode, another entry
    assert cache.get(TGT, SRC, "surface") is None  # direction matters
    npy, sidecar = cache.paths(SRC, TGT, "surface")
    meta = json.loads(sidecar.read_text())
    assert meta["exact_matches"] == 3 and meta["source_size"] == 50 and meta["target_size"] == 20
    assert sorted(p.name for p in npy.parent.iterdir()) == sorted([npy.name, sidecar.name])


def test_expected_sizes_must_match(tmp_path: Path) -> None:
    cache = VocabMapCache(tmp_path)
    cache.put(SRC, TGT, "surface", small_map(), {"target_size": 20})
    assert cache.get(SRC, TGT, "surface", source_size=51) is None
    assert cache.get(SRC, TGT, "surface", target_size=21) is None
    assert cache.get(SRC, TGT, "surface", source_size=50, target_size=20) is not None


def test_invalid_maps_are_not_stored(tmp_path: Path) -> None:
    cache = VocabMapCache(tmp_path)
    with pytest.raises(ValueError, match="outside"):
        cache.put(SRC, TGT, "surface", small_map(target_size=20), {"target_size": 10})
    with pytest.raises(ValueError, match="int32"):
        cache.put(SRC, TGT, "surface", small_map().astype(np.int64), {"target_size": 20})
    with pytest.raises(KeyError):
        cache.put(SRC, TGT, "surface", small_map(), {})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", ["../" + "a" * 61, "A" * 64, "a" * 63, "", "a" * 63 + "/",
                                 "a" * 62 + "..", "g" * 64])
def test_bad_fingerprints_are_rejected(tmp_path: Path, bad: str) -> None:
    cache = VocabMapCache(tmp_path / "maps")
    with pytest.raises(ValueError, match="fingerprint"):
        cache.get(bad, TGT, "surface")
    with pytest.raises(ValueError, match="fingerprint"):
        cache.put(SRC, bad, "surface", small_map(), {"target_size": 20})
    assert not (tmp_path / "maps").exists()
    with pytest.raises(ValueError):
        cache.get(SRC, TGT, "../x")  # not a mode


def test_interrupted_write_leaves_no_partial_file(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cache = VocabMapCache(tmp_path)
    old = small_map()
    cache.put(SRC, TGT, "surface", old, {"target_size": 20})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def crash(file, array, allow_pickle=False) -> None:
        file.write(b"\x93NUMPY partial")  # half a file, then the process dies
        raise OSError("disk full")

    monkeypatch.setattr(cache_module.np, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        cache.put(SRC, TGT, "surface", small_map(target_size=19), {"target_size": 20})
    monkeypatch.undo()
    # the old entry is untouched and no temporary file is left behind
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert np.array_equal(cache.get(SRC, TGT, "surface"), old)


def test_sidecar_is_moved_into_place_last(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    moved: list[str] = []
    real_replace = os.replace

    def record(src: str, dst: str | Path) -> None:
        assert Path(src).parent == Path(dst).parent == tmp_path  # same folder: atomic
        moved.append(Path(dst).suffix)
        real_replace(src, dst)

    monkeypatch.setattr(cache_module.os, "replace", record)
    VocabMapCache(tmp_path).put(SRC, TGT, "fate", small_map(), {"target_size": 20})
    assert moved == [".npy", ".json"]


def _corrupt_truncate(npy: Path, sidecar: Path) -> None:
    npy.write_bytes(npy.read_bytes()[:60])


def _corrupt_dtype(npy: Path, sidecar: Path) -> None:
    np.save(npy, small_map().astype(np.int64))


def _corrupt_ids(npy: Path, sidecar: Path) -> None:
    bad = small_map()
    bad[3] = 20  # == target size
    np.save(npy, bad)
    meta = json.loads(sidecar.read_text())
    meta["sha256"] = cache_module._digest(bad)  # even with a matching checksum
    sidecar.write_text(json.dumps(meta))


def _corrupt_length(npy: Path, sidecar: Path) -> None:
    np.save(npy, small_map(49))


def _corrupt_ndim(npy: Path, sidecar: Path) -> None:
    np.save(npy, small_map().reshape(5, 10))


def _corrupt_pickle(npy: Path, sidecar: Path) -> None:
    np.save(npy, np.array([{"a": 1}], dtype=object), allow_pickle=True)


def _corrupt_values(npy: Path, sidecar: Path) -> None:
    changed = small_map()
    changed[0] = 1
    np.save(npy, changed)


def _corrupt_sidecar(npy: Path, sidecar: Path) -> None:
    sidecar.write_text("{not json")


def _other_fingerprint_in_sidecar(npy: Path, sidecar: Path) -> None:
    meta = json.loads(sidecar.read_text())
    meta["target_fingerprint"] = "c" * 64
    sidecar.write_text(json.dumps(meta))


def _missing_npy(npy: Path, sidecar: Path) -> None:
    npy.unlink()


@pytest.mark.parametrize("corrupt", [
    _corrupt_truncate, _corrupt_dtype, _corrupt_ids, _corrupt_length, _corrupt_ndim,
    _corrupt_pickle, _corrupt_values, _corrupt_sidecar, _other_fingerprint_in_sidecar,
    _missing_npy,
])
def test_corrupt_entries_are_misses(tmp_path: Path, corrupt, caplog: pytest.LogCaptureFixture,
                                    ) -> None:
    cache = VocabMapCache(tmp_path)
    cache.put(SRC, TGT, "surface", small_map(), {"target_size": 20})
    corrupt(*cache.paths(SRC, TGT, "surface"))
    with caplog.at_level(logging.WARNING, logger="fedmkt.align.cache"):
        assert cache.get(SRC, TGT, "surface") is None
    if corrupt is not _missing_npy:
        assert "will be rebuilt" in caplog.text
    # a fresh put repairs the entry
    cache.put(SRC, TGT, "surface", small_map(), {"target_size": 20})
    assert np.array_equal(cache.get(SRC, TGT, "surface"), small_map())


def test_vocab_map_for_rebuilds_a_corrupt_entry(tmp_path: Path) -> None:
    source = word_tokenizer(["hello", "world", "helo", "wrld", "zzz"])
    target = word_tokenizer(["world", "help", "hello", "word"])
    cache = VocabMapCache(tmp_path)
    first = vocab_map_for(source, target, "surface", cache=cache)
    assert not first.from_cache
    assert first.exact_matches == 3  # <unk>, hello, world
    expected = build_vocab_map(["<unk>", "hello", "world", "helo", "wrld", "zzz"],
                               ["<unk>", "world", "help", "hello", "word"])
    assert np.array_equal(first.source_to_target, expected)
    assert vocab_map_for(source, target, "surface", cache=cache).from_cache

    npy, _ = cache.paths(first.source_fingerprint, first.target_fingerprint, "surface")
    npy.write_bytes(b"garbage")
    rebuilt = vocab_map_for(source, target, "surface", cache=cache)
    assert not rebuilt.from_cache and np.array_equal(rebuilt.source_to_target, expected)
    again = vocab_map_for(source, target, "surface", cache=cache)
    assert again.from_cache and np.array_equal(again.source_to_target, expected)
