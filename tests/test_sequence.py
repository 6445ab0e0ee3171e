"""Sequence alignment: DTW (fast vs the reference-style oracle) and the offsets sweep."""

from __future__ import annotations

import random

import numpy as np
import pytest

from fedmkt.align.canonical import CanonicalMode, canonical_vocab, surface_vocab
from fedmkt.align.sequence import dtw_align, dtw_align_reference, offsets_align
from fedmkt.models.tokenizers import load_tokenizer

PASSAGE = (
    "Federated learning trains a model across many devices that keep their data local. "
    "In FedMKT, a large language model on the server and small models on the clients teach "
    "each other: every party computes the top-k next-token logits on a public dataset, and an "
    "aligner maps them across tokenizers with dynamic time warping.\n\n"
    "Unicode matters too: naïve café, façade, Zürich, 東京都, Москва, emoji 😀🚀, "
    "numbers like 3.14159 and 1,234,567, code `x = f(y) + 2`, and   irregular\tspacing.\n"
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs!"
)
REFERENCE_MARKER = {"gpt2": "Ġ", "neox": "Ġ", "smollm2": "Ġ", "mistral": "▁"}


def assert_valid_path(path: list[tuple[int, int]], n: int, m: int) -> None:
    assert path[0] == (0, 0) and path[-1] == (n - 1, m - 1)
    for (i0, j0), (i1, j1) in zip(path, path[1:], strict=False):
        assert (i1 - i0, j1 - j0) in {(1, 0), (0, 1), (1, 1)}
    assert {i for i, _ in path} == set(range(n))
    assert {j for _, j in path} == set(range(m))


# --------------------------------------------------------------------------- hand-made DTW


def test_identical_sequences_give_the_diagonal():
    tokens = ["The", " cat", " sat", " on", " the", " mat"]
    assert dtw_align(tokens, tokens) == [(i, i) for i in range(len(tokens))]


def test_a_split_token_pairs_with_both_pieces():
    assert dtw_align(["hello"], ["hel", "lo"]) == [(0, 0), (0, 1)]
    assert dtw_align(["hel", "lo"], ["hello"]) == [(0, 0), (1, 0)]
    # Costs hello/hel 2, hello/lo 3, " world"/lo 5, " world"/" world" 0: accumulated row 0 is
    # [2, 5, 10], row 1 [8, 7, 5]; the walk back goes diagonal, then left.
    source, target = ["hello", " world"], ["hel", "lo", " world"]
    assert dtw_align(source, target) == [(0, 0), (0, 1), (1, 2)]


def test_an_inserted_token_joins_its_neighbour_diagonal_first():
    # Worked by hand: the accumulated costs tie between the diagonal and the left move at
    # (1, 2); the diagonal wins, so "x" is absorbed by "a".
    assert dtw_align(["a", "b", "c"], ["a", "x", "b", "c"]) == [(0, 0), (0, 1), (1, 2), (2, 3)]
    assert dtw_align(["a", "x", "b", "c"], ["a", "b", "c"]) == [(0, 0), (1, 0), (2, 1), (3, 2)]


def test_tie_between_up_and_left_prefers_up():
    # Accumulated costs (worked by hand): [[0, 1, 2], [1, 2, 1], [2, 1, 3]]. From (2, 2) the
    # up cell (1, 2) and the left cell (2, 1) both hold 1, the diagonal 2: up wins.
    source, target = ["a", "aa", "b"], ["a", "b", "aa"]
    expected = [(0, 0), (0, 1), (1, 2), (2, 2)]
    assert dtw_align(source, target) == expected
    assert dtw_align_reference(source, target) == expected


def test_empty_sequences_give_an_empty_path():
    assert dtw_align([], []) == []
    assert dtw_align(["a"], []) == []
    assert dtw_align([], ["a"]) == []
    assert dtw_align_reference([], ["a"]) == []


def test_single_token_against_many():
    assert dtw_align(["abc"], ["a", "b", "c"]) == [(0, 0), (0, 1), (0, 2)]
    assert dtw_align(["a", "b", "c"], ["abc"]) == [(0, 0), (1, 0), (2, 0)]


def test_unicode_and_empty_strings_cost_by_code_point():
    source = ["東京", "都", "😀", "", "café"]
    target = ["東", "京都", "😀", "caf", "é"]
    path = dtw_align(source, target)
    assert path == dtw_align_reference(source, target)
    assert_valid_path(path, len(source), len(target))
    assert (2, 2) in path  # the emoji matches the emoji


@pytest.mark.parametrize("seed", range(6))
def test_random_small_alphabet_matches_the_reference(seed: int):
    """Small alphabets make many ties: the traceback order must equal the reference's."""
    rng = random.Random(seed)
    for _ in range(60):
        n, m = rng.randint(1, 25), rng.randint(1, 25)
        source = ["".join(rng.choices("ab ", k=rng.randint(0, 3))) for _ in range(n)]
        target = ["".join(rng.choices("ab ", k=rng.randint(0, 3))) for _ in range(m)]
        path = dtw_align(source, target)
        assert path == dtw_align_reference(source, target)
        assert_valid_path(path, n, m)


def test_cost_matrix_computed_in_row_blocks_gives_the_same_path(monkeypatch):
    import fedmkt.align.sequence as sequence

    rng = random.Random(7)
    cases = [(["".join(rng.choices("ab ", k=rng.randint(0, 3))) for _ in range(rng.randint(1, 20))],
              ["".join(rng.choices("ab ", k=rng.randint(0, 3))) for _ in range(rng.randint(1, 20))])
             for _ in range(40)]
    whole = [dtw_align(a, b) for a, b in cases]
    monkeypatch.setattr(sequence, "_BLOCK_CELLS", 7)  # a few rows per block
    assert [dtw_align(a, b) for a, b in cases] == whole
    assert whole == [dtw_align_reference(a, b) for a, b in cases]


# --------------------------------------------------------------------------- real tokenizers


@pytest.fixture(scope="module")
def tokenizers():
    return {name: load_tokenizer(name) for name in REFERENCE_MARKER}


def random_windows(rng: random.Random, count: int) -> list[str]:
    out = []
    for _ in range(count):
        start = rng.randrange(0, len(PASSAGE) - 40)
        out.append(PASSAGE[start : start + rng.randint(40, 400)])
    return out


@pytest.mark.parametrize("source_name,target_name", [
    ("mistral", "gpt2"), ("gpt2", "mistral"), ("neox", "smollm2"), ("smollm2", "mistral"),
])
@pytest.mark.parametrize("mode", [CanonicalMode.SURFACE, CanonicalMode.FATE])
def test_real_tokenizations_match_the_reference(tokenizers, source_name, target_name, mode):
    src, tgt = tokenizers[source_name], tokenizers[target_name]
    src_vocab = canonical_vocab(src, mode, counterpart=tgt)
    tgt_vocab = canonical_vocab(tgt, mode)
    rng = random.Random(f"{source_name}-{target_name}-{mode.value}")
    for text in random_windows(rng, 4) + [PASSAGE]:
        src_ids = src(text, add_special_tokens=False).input_ids
        tgt_ids = tgt(text, add_special_tokens=False).input_ids
        source = [src_vocab[i] for i in src_ids]
        target = [tgt_vocab[i] for i in tgt_ids]
        path = dtw_align(source, target)
        assert path == dtw_align_reference(source, target)
        assert_valid_path(path, len(source), len(target))


def test_fate_strings_with_markers_removed_match_the_reference_cost(tokenizers):
    """The reference's DTW cost strips each side's marker; same path as ours on those strings."""
    src, tgt = tokenizers["mistral"], tokenizers["gpt2"]
    src_ids = src(PASSAGE, add_special_tokens=False).input_ids
    tgt_ids = tgt(PASSAGE, add_special_tokens=False).input_ids
    ref_source = [t.replace("▁", "") for t in src.convert_ids_to_tokens(src_ids)]
    ref_target = [t.replace("Ġ", "") for t in tgt.convert_ids_to_tokens(tgt_ids)]
    fate = canonical_vocab(src, CanonicalMode.FATE, counterpart=tgt)
    ours = [fate[i].replace("Ġ", "") for i in src_ids]
    assert ours == ref_source
    assert dtw_align(ours, ref_target) == dtw_align_reference(ref_source, ref_target)


# --------------------------------------------------------------------------- offsets


def test_offsets_identical_spans_give_the_diagonal():
    spans = [(0, 3), (3, 7), (7, 8)]
    assert offsets_align(spans, spans) == [(0, 0), (1, 1), (2, 2)]


def test_offsets_pair_exactly_the_overlapping_tokens():
    source = [(0, 5), (5, 11), (11, 12)]  # "hello", " world", "!"
    target = [(0, 3), (3, 5), (5, 6), (6, 12)]  # "hel", "lo", " ", "world!"
    assert offsets_align(source, target) == [(0, 0), (0, 1), (1, 2), (1, 3), (2, 3)]


def test_offsets_zero_width_tokens_stay_with_the_token_under_the_sweep():
    # A zero-width token at the start pairs with the other side's first token ...
    assert offsets_align([(0, 0), (0, 5)], [(0, 5)]) == [(0, 0), (1, 0)]
    # ... and one at a boundary with the token that ends there.
    assert offsets_align([(0, 5), (5, 5), (5, 9)], [(0, 5), (5, 9)]) == [
        (0, 0), (1, 0), (2, 1)
    ]


def test_offsets_byte_pieces_sharing_one_span():
    # Three byte-fallback tokens of one character against one token for it, then a word.
    source = [(0, 1), (0, 1), (0, 1), (1, 4)]
    target = [(0, 1), (1, 4)]
    assert offsets_align(source, target) == [(0, 0), (1, 0), (2, 0), (3, 1)]


def test_offsets_empty_and_invalid():
    assert offsets_align([], [(0, 1)]) == []
    with pytest.raises(ValueError, match="invalid span"):
        offsets_align([(3, 1)], [(0, 1)])


@pytest.mark.parametrize("source_name,target_name", [("gpt2", "mistral"), ("mistral", "smollm2")])
def test_offsets_on_real_tokenizations(tokenizers, source_name, target_name):
    """Byte spans from surface strings: every overlapping pair and nothing disjoint."""
    src, tgt = tokenizers[source_name], tokenizers[target_name]
    text = PASSAGE
    spans = []
    for tok in (src, tgt):
        surface = surface_vocab(tok)
        pieces = [surface[i].encode("utf-8", "surrogateescape")
                  for i in tok(text, add_special_tokens=False).input_ids]
        ends = np.cumsum([len(p) for p in pieces])
        spans.append(list(zip([0, *ends[:-1].tolist()], ends.tolist(), strict=True)))
        # SentencePiece adds a leading space; shift the other side to the same text below.
    src_len, tgt_len = spans[0][-1][1], spans[1][-1][1]
    shift = abs(src_len - tgt_len)
    longer_is_source = src_len > tgt_len
    shorter = 1 if longer_is_source else 0
    spans[shorter] = [(s + shift, e + shift) for s, e in spans[shorter]]
    source, target = spans
    path = offsets_align(source, target)
    assert_valid_path(path, len(source), len(target))
    overlapping = {
        (i, j)
        for i, (a0, a1) in enumerate(source)
        for j, (b0, b1) in enumerate(target)
        if a0 < b1 and b0 < a1
    }
    assert overlapping <= set(path)
    nonempty_pairs = [(i, j) for i, j in path if source[i][0] < source[i][1]
                      and target[j][0] < target[j][1]]
    disjoint = [pair for pair in nonempty_pairs if pair not in overlapping]
    assert len(disjoint) <= 1  # at most the leading-space ambiguity


def test_offsets_with_tokenizer_character_offsets(tokenizers):
    """Character offsets (NeoX trims spaces off its spans) on ASCII text: every overlap kept."""
    text = PASSAGE.split("\n\n")[0]
    src, tgt = tokenizers["neox"], tokenizers["gpt2"]
    a = src(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    b = tgt(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    path = offsets_align(a, b)
    assert_valid_path(path, len(a), len(b))
    overlapping = {(i, j) for i, (a0, a1) in enumerate(a) for j, (b0, b1) in enumerate(b)
                   if a0 < b1 and b0 < a1}
    assert overlapping <= set(path)
    assert len(overlapping) > len(a) // 2
