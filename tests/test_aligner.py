"""TokenAligner on real builtin tokenizers: text and id alignment, projection, both directions."""

from __future__ import annotations

import numpy as np
import pytest

from fedmkt.align.aligner import TokenAligner, printable_token
from fedmkt.align.canonical import CanonicalMode, canonical_vocab
from fedmkt.align.sequence import dtw_align, dtw_align_reference
from fedmkt.errors import InvalidArgument
from fedmkt.models.tokenizers import load_tokenizer

TEXT = (
    "The committee approved the new budget on Tuesday, after a long debate about schools, "
    "roads and the public library. Residents said the plan was fair; critics called it "
    "short-sighted.\n\nCafé owners in Zürich reported record sales 😀 during the 2024 festival."
)
ASCII = "The quick brown fox jumps over the lazy dog, and then it naps under the old oak tree."


def exact_map(source_strings: list[str], target_strings: list[str]) -> np.ndarray:
    """A simple vocab map for tests: same canonical string (smallest target id), else -1."""
    first: dict[str, int] = {}
    for i, s in enumerate(target_strings):
        first.setdefault(s, i)
    return np.array([first.get(s, -1) for s in source_strings], dtype=np.int32)


@pytest.fixture(scope="module")
def mistral():
    return load_tokenizer("mistral")


@pytest.fixture(scope="module")
def gpt2():
    return load_tokenizer("gpt2")


def make(src, tgt, mode=CanonicalMode.SURFACE, method="dtw") -> TokenAligner:
    vmap = exact_map(canonical_vocab(src, mode, counterpart=tgt), canonical_vocab(tgt, mode))
    return TokenAligner(src, tgt, mode=mode, method=method, vocab_map=vmap)


@pytest.fixture(scope="module")
def surface(mistral, gpt2):
    return make(mistral, gpt2)


def assert_valid_path(path, n, m):
    assert path[0] == (0, 0) and path[-1] == (n - 1, m - 1)
    steps = {(b[0] - a[0], b[1] - a[1]) for a, b in zip(path, path[1:], strict=False)}
    assert steps <= {(1, 0), (0, 1), (1, 1)}


def perfect_teacher(source_ids: list[int], k: int, rng: np.random.Generator):
    """Rows that put the true next source token first, then random ids (logits descending)."""
    n = len(source_ids)
    ids = rng.integers(0, 32000, size=(n, k)).astype(np.int32)
    ids[:-1, 0] = source_ids[1:]
    logits = np.sort(rng.normal(size=(n, k)).astype(np.float32), axis=1)[:, ::-1] + 0
    logits[:, 0] = 10.0
    return ids, np.ascontiguousarray(logits)


def test_align_text_tokenizes_without_specials_and_gives_canonical_tokens(surface, mistral,
                                                                          gpt2):
    result = surface.align_text(TEXT)
    assert result.source_ids == mistral(TEXT, add_special_tokens=False).input_ids
    assert result.target_ids == gpt2(TEXT, add_special_tokens=False).input_ids
    # Surface strings spell the text (partial UTF-8 bytes as surrogate escapes).
    spelled = "".join(result.target_tokens).encode("utf-8", "surrogateescape").decode("utf-8")
    assert spelled == TEXT
    assert "".join(result.source_tokens).strip() == TEXT.strip()
    assert_valid_path(result.path, len(result.source_ids), len(result.target_ids))
    assert result.path == dtw_align_reference(result.source_tokens, result.target_tokens)
    assert result.source_offsets is None


def test_offsets_method_from_text_and_from_ids_agree(mistral, gpt2):
    aligner = make(mistral, gpt2, method="offsets")
    result = aligner.align_text(TEXT)
    assert result.source_offsets is not None and result.target_offsets is not None
    assert_valid_path(result.path, len(result.source_ids), len(result.target_ids))
    assert aligner.align_ids(result.source_ids, result.target_ids) == result.path
    # Words tokenized alike pair one-to-one: " committee" with " committee".
    pairs = {(result.source_tokens[i], result.target_tokens[j]) for i, j in result.path}
    assert (" committee", " committee") in pairs
    # A BOS token contributes no text: it joins the first target token, the rest is unchanged.
    with_bos = aligner.align_ids([mistral.bos_token_id, *result.source_ids], result.target_ids)
    assert with_bos[:2] == [(0, 0), (1, 0)]
    assert [(i - 1, j) for i, j in with_bos[1:]] == result.path


def test_offsets_fall_back_to_dtw_when_the_texts_differ(mistral, gpt2):
    aligner = make(mistral, gpt2, method="offsets")
    src = mistral("A different sentence here.", add_special_tokens=False).input_ids
    tgt = gpt2(ASCII, add_special_tokens=False).input_ids
    expected = dtw_align(aligner.source.dtw[src].tolist(), aligner.target.dtw[tgt].tolist())
    assert aligner.align_ids(src, tgt) == expected


@pytest.mark.parametrize("method", ["dtw", "offsets"])
def test_projection_of_a_perfect_teacher_puts_the_next_student_token_on_top(mistral, gpt2,
                                                                            method):
    aligner = make(mistral, gpt2, method=method)
    src = mistral(TEXT, add_special_tokens=False).input_ids
    tgt = gpt2(TEXT, add_special_tokens=False).input_ids
    ids, logits = perfect_teacher(src, 8, np.random.default_rng(0))
    out = aligner.project(src, tgt, ids, logits, 0, 8)
    assert out.positions == len(tgt) - 1 == out.aligned + out.fallback
    assert out.aligned > 0.6 * out.positions
    rows = np.nonzero(out.aligned_mask)[0]
    strings = aligner.target.canonical
    for q in rows:
        assert strings[out.topk_ids[q, 0]] == strings[tgt[q + 1]]
        assert out.topk_logits[q, 0] == 10.0
    fallback = np.nonzero(~out.aligned_mask)[0]
    assert (out.topk_ids[fallback, 0] == np.asarray(tgt)[fallback + 1]).all()


def test_projection_with_a_position_window(surface, mistral, gpt2):
    src = mistral(ASCII, add_special_tokens=False).input_ids
    tgt = gpt2(ASCII, add_special_tokens=False).input_ids
    ids, logits = perfect_teacher(src, 4, np.random.default_rng(1))
    full = surface.project(src, tgt, ids, logits, 0, 4)
    window = surface.project(src, tgt, ids[5:10], logits[5:10], 5, 4)
    assert 0 < window.aligned < full.aligned
    # Only the student rows the sent rows reach are returned, from window.position_start on,
    # and every row aligned in the window is aligned the same way with all rows sent.
    start, rows = window.position_start, window.positions
    assert 0 < start and start + rows < len(tgt) - 1
    assert rows == window.aligned + window.fallback == len(window.topk_ids)
    same = full.topk_ids[start : start + rows]
    assert (same[window.aligned_mask] == window.topk_ids[window.aligned_mask]).all()
    assert (full.aligned_mask[start : start + rows] >= window.aligned_mask).all()


def test_both_directions(mistral, gpt2):
    backward = make(gpt2, mistral)
    src = gpt2(ASCII, add_special_tokens=False).input_ids
    tgt = mistral(ASCII, add_special_tokens=False).input_ids
    ids, logits = perfect_teacher(src, 4, np.random.default_rng(2))
    out = backward.project(src, tgt, ids, logits, 0, 4)
    assert out.positions == len(tgt) - 1 and out.aligned > 0.6 * out.positions
    assert backward.vocab_map.shape == (len(gpt2),)


def test_fate_mode_reproduces_the_reference_strings(mistral, gpt2):
    aligner = make(mistral, gpt2, mode=CanonicalMode.FATE)
    result = aligner.align_text(ASCII)
    raw_source = mistral.convert_ids_to_tokens(result.source_ids)
    raw_target = gpt2.convert_ids_to_tokens(result.target_ids)
    assert result.source_tokens == [t.replace("▁", "Ġ") for t in raw_source]
    assert result.target_tokens == raw_target
    reference = dtw_align_reference([t.replace("▁", "") for t in raw_source],
                                    [t.replace("Ġ", "") for t in raw_target])
    assert result.path == reference


def test_vocab_map_is_built_when_not_given(mistral, gpt2):
    aligner = TokenAligner(mistral, gpt2)
    assert aligner.vocab_map.shape == (len(mistral),)
    assert aligner.vocab_map.min() >= 0 and aligner.vocab_map.max() < len(gpt2)
    src = mistral(TEXT, add_special_tokens=False).input_ids
    tgt = gpt2(TEXT, add_special_tokens=False).input_ids
    ids, logits = perfect_teacher(src, 8, np.random.default_rng(3))
    mined = aligner.project(src, tgt, ids, logits, 0, 8)
    # MinED maps every teacher id somewhere: aligned rows are never shorter than with the
    # exact-match map.
    exact = make(mistral, gpt2).project(src, tgt, ids, logits, 0, 8)
    assert mined.aligned >= exact.aligned
    assert ((mined.topk_ids >= 0).sum(axis=1) >= (exact.topk_ids >= 0).sum(axis=1)).all()


def test_invalid_inputs_raise_invalid_argument(surface, mistral, gpt2):
    with pytest.raises(InvalidArgument, match="out of range"):
        surface.align_ids([0, len(mistral)], [0])
    with pytest.raises(InvalidArgument, match="1-D"):
        surface.align_ids([[1, 2]], [0])
    with pytest.raises(InvalidArgument, match="k_out"):
        surface.project([1, 2], [3, 4], np.zeros((2, 2), np.int32), np.zeros((2, 2), np.float32),
                        0, 0)
    with pytest.raises(InvalidArgument, match="method"):
        TokenAligner(mistral, gpt2, method="greedy", vocab_map=surface.vocab_map)
    with pytest.raises(InvalidArgument, match="entries"):
        TokenAligner(mistral, gpt2, vocab_map=surface.vocab_map[:-1])
    with pytest.raises(InvalidArgument, match="target ids"):
        TokenAligner(mistral, gpt2, vocab_map=np.full(len(mistral), len(gpt2)))
    with pytest.raises(InvalidArgument, match="string"):
        surface.align_text(b"bytes")  # type: ignore[arg-type]


def test_printable_tokens_are_valid_utf8(surface):
    result = surface.align_text("emoji 😀 here")
    partial = [t for t in result.target_tokens if any("\udc80" <= c <= "\udcff" for c in t)]
    assert partial  # gpt2 splits the emoji into byte pieces
    shown = [printable_token(t) for t in result.target_tokens]
    "".join(shown).encode("utf-8")  # would raise on a lone surrogate
    assert printable_token(" \udcf0\udc9f\udc98") == " <0xF0><0x9F><0x98>"
    assert printable_token("plain café") == "plain café"
    assert printable_token("\ud800") == "\ufffd"
