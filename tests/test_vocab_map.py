"""The MinED vocabulary map: hand-made cases, random strings and real vocabularies, each
checked against the brute-force oracle (one editdistance call per pair)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from fedmkt.align.cache import VocabMapCache
from fedmkt.align.canonical import CanonicalMode, canonical_vocab
from fedmkt.align.fingerprint import tokenizer_fingerprint
from fedmkt.align.vocab_map import brute_force_vocab_map, build_vocab_map, vocab_map_for
from fedmkt.models.tokenizers import load_tokenizer


def both(source: list[str], target: list[str]) -> list[int]:
    """The fast map, after checking that it equals the oracle."""
    fast = build_vocab_map(source, target)
    assert fast.dtype == np.int32 and fast.shape == (len(source),)
    assert fast.tolist() == brute_force_vocab_map(source, target).tolist()
    return fast.tolist()


# --------------------------------------------------------------------------- hand-made cases


def test_exact_match_takes_the_smallest_id_of_duplicates() -> None:
    assert both(["ab", "x"], ["x", "ab", "ab", "x"]) == [1, 0]


def test_ties_by_string_then_id() -> None:
    # all three targets are one substitution away: the smallest string wins
    assert both(["abc"], ["abd", "abx", "aba"]) == [2]
    # duplicate target strings at the best distance: the smallest id of the smallest string
    assert both(["ab"], ["zz", "ac", "ac", "aa"]) == [3]
    assert both(["ab"], ["zz", "ac", "ac"]) == [1]
    # distance beats string order
    assert both(["abcd"], ["a", "abxd"]) == [1]


def test_code_point_order_for_unicode_ties() -> None:
    assert both(["a"], ["é", "z"]) == [1]  # "z" (U+007A) < "é" (U+00E9)
    assert both(["日本"], ["月本", "日本語"]) == [1]  # both one edit away; U+65E5 < U+6708
    assert both(["\udce4"], ["\udce5", "\udce3", "\udcff"]) == [1]  # surrogate-escaped bytes
    assert both(["naïve"], ["naive", "naïv", "naïves"]) == [0]


def test_characters_absent_from_every_target() -> None:
    # "日", "語", "本" occur in no target: they are interchangeable for the distance
    source = ["日本語", "語日本", "a日b", "日", "日日日日", "ab語"]
    assert both(source, ["xyz", "ab", "b"]) == [1, 1, 1, 2, 1, 1]
    assert both(source, ["xyz", "ab", "", "b"]) == [2, 2, 1, 2, 2, 1]
    # private-use characters in the vocabularies do not clash with internal placeholders
    pua = "".join(chr(c) for c in range(0xE000, 0xE010))
    source = [pua[:3], pua[1:4] + "a", "a" + pua[0], pua[5] + "b"]
    both(source, [pua[:2], pua[2:5], "a", pua[0] + "b", pua[3]])


def test_empty_strings() -> None:
    assert both([""], ["a", "", "b"]) == [1]  # exact
    assert both([""], ["bb", "c", "a"]) == [2]  # distance 1, smallest string
    assert both([""], ["cd", "ab"]) == [1]  # distance 2 (no 1-character target)
    assert both(["abc"], ["", "xyzw"]) == [0]  # distance 3 to "", 4 to "xyzw"
    assert both(["a", ""], [""]) == [0, 0]


def test_long_sources_and_larger_distances() -> None:
    source = ["x" * 40, "abcdefgh", "hello world", "zzzzzz"]
    target = ["abc", "defg", "hello", "x" * 10, "world", "abcdXfgY"]
    # "zzzzzz" is 6 edits from "abc", "defg", "hello" and "world": the smallest string wins
    assert both(source, target) == [3, 5, 2, 0]


def test_random_strings_with_many_ties() -> None:
    rng = random.Random(7)

    def word() -> str:
        return "".join(rng.choice("abé ") for _ in range(rng.randint(0, 7)))

    source = [word() for _ in range(300)]
    target = [word() for _ in range(400)]
    both(source, target)
    both(target, source)


def test_anagrams_and_shuffles_across_levels() -> None:
    """Targets that pass the bag bound at a low level but sit at a larger distance (anagrams,
    shuffles): each candidate is verified once, at the level of its bound, and its distance is
    remembered for the later levels; the map must still equal the oracle."""
    rng = random.Random(5)

    def word(alphabet: str) -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(3, 10)))

    def shuffled(s: str) -> str:
        chars = list(s)
        rng.shuffle(chars)
        return "".join(chars)

    source = [word("abcdef") for _ in range(150)] + [word("abcdefghéxyz") for _ in range(50)]
    target = [shuffled(s) for s in source[::2]] + [word("abcdefgé") for _ in range(200)]
    target += [shuffled(s)[1:] + "q" for s in source[1::3]]
    both(source, target)
    both(target, source)


def edits(s: str, count: int, rng: random.Random, alphabet: str) -> str:
    for _ in range(count):
        i = rng.randrange(len(s) + 1)
        op = rng.choice("sdi")
        if op == "s" and i < len(s):
            s = s[:i] + rng.choice(alphabet) + s[i + 1:]
        elif op == "d" and i < len(s):
            s = s[:i] + s[i + 1:]
        else:
            s = s[:i] + rng.choice(alphabet) + s[i:]
    return s


@pytest.mark.parametrize("max_matches", [None, 3])
def test_long_sources_at_distance_two(monkeypatch, max_matches: int | None) -> None:
    """Sources of length >= 6 go through the deletion neighbourhoods at level 2 (two edits of
    every kind, repeated characters, several targets at distance 2 and duplicate target
    strings); with a tiny match limit most of them fall back to the level search."""
    from fedmkt.align import vocab_map

    if max_matches is not None:
        monkeypatch.setattr(vocab_map, "_TWO_MAX_MATCHES", max_matches)
    rng = random.Random(11)
    alphabet = "abcaab\u00e9x"
    source = ["".join(rng.choice(alphabet) for _ in range(rng.randint(6, 12)))
              for _ in range(200)]
    source += ["aaaaaaa", "abababab", "aabbaabb"]
    target = [edits(s, rng.choice([2, 2, 3]), rng, alphabet) for s in source for _ in range(2)]
    target += ["aaaaa", "aaaaaaaaa", "abab" "abab" "ab", "aabbab", "ab" * 3]
    target += target[::7]  # duplicate strings: the smallest id wins
    assert max(len(s) for s in source) <= 12
    both(source, target)


def test_options_do_not_change_the_result() -> None:
    rng = random.Random(3)
    words = ["".join(rng.choice("abcd") for _ in range(rng.randint(1, 6))) for _ in range(300)]
    source, target = words[:120], words[120:]
    expected = build_vocab_map(source, target)
    assert np.array_equal(build_vocab_map(source, target, workers=1), expected)
    assert np.array_equal(build_vocab_map(source, target, progress=True), expected)
    assert brute_force_vocab_map(source, target, indices=[5, 0]).tolist() == [
        expected[5], expected[0]]


def test_empty_target_is_rejected() -> None:
    with pytest.raises(ValueError):
        build_vocab_map(["a"], [])
    assert build_vocab_map([], ["a"]).shape == (0,)


# --------------------------------------------------------------------------- real vocabularies


PAIRS = [("mistral", "gpt2", 300, 3000), ("neox", "smollm2", 200, 2000)]


@pytest.mark.parametrize("mode", list(CanonicalMode))
@pytest.mark.parametrize("src,tgt,n_source,n_target", PAIRS)
def test_real_vocab_subsets_equal_the_oracle(src: str, tgt: str, n_source: int, n_target: int,
                                             mode: CanonicalMode) -> None:
    source_tok, target_tok = load_tokenizer(src), load_tokenizer(tgt)
    source = canonical_vocab(source_tok, mode, target_tok)
    target = canonical_vocab(target_tok, mode)
    rng = random.Random(f"{src}-{tgt}-{mode.value}")
    target_ids = rng.sample(range(len(target)), n_target)
    target_strings = [target[i] for i in target_ids]
    # half of the sources have an exact match in the subset, half are random tokens
    present = set(target_strings)
    exact = [s for s in source if s in present]
    sample = rng.sample(exact, min(len(exact), n_source // 2))
    sample += rng.sample(source, n_source - len(sample))
    fast = build_vocab_map(sample, target_strings)
    assert fast.tolist() == brute_force_vocab_map(sample, target_strings).tolist()


def test_full_map_rows_equal_the_oracle_and_the_cache(tmp_path) -> None:
    """The whole mistral → gpt2 map (surface mode): sampled rows equal the oracle over all
    50,257 targets; a second call comes from the cache."""
    mistral, gpt2 = load_tokenizer("mistral"), load_tokenizer("gpt2")
    cache = VocabMapCache(tmp_path)
    result = vocab_map_for(mistral, gpt2, CanonicalMode.SURFACE, cache=cache)
    assert not result.from_cache
    assert result.source_fingerprint == tokenizer_fingerprint(mistral)
    assert result.target_fingerprint == tokenizer_fingerprint(gpt2)
    source, target = canonical_vocab(mistral, "surface"), canonical_vocab(gpt2, "surface")
    mapping = result.source_to_target
    assert mapping.shape == (32000,) and mapping.dtype == np.int32
    assert 0 <= mapping.min() and mapping.max() < len(gpt2)
    target_set = set(target)
    is_exact = [s in target_set for s in source]
    assert result.exact_matches == sum(is_exact) and 0 < result.exact_matches < 32000
    rng = random.Random(11)
    rows = rng.sample([i for i, e in enumerate(is_exact) if not e], 6) + rng.sample(range(32000), 2)
    assert brute_force_vocab_map(source, target, rows).tolist() == mapping[rows].tolist()
    # known rows: " the" exists in both; "\n" (byte fallback) maps to gpt2's "Ċ"
    the = mistral.convert_tokens_to_ids("▁the")
    assert mapping[the] == gpt2.convert_tokens_to_ids("Ġthe")
    assert mapping[13] == gpt2.convert_tokens_to_ids("Ċ")

    again = vocab_map_for(mistral, gpt2, "surface", cache=cache)
    assert again.from_cache and np.array_equal(again.source_to_target, mapping)
    assert again.exact_matches == result.exact_matches


def test_deletion_variant_hashes_equal_the_hashes_of_the_variants() -> None:
    """The two-deletion hashes computed from prefix differences equal the hashes of the
    variant strings themselves (the string, each one-deletion and each two-deletion)."""
    from fedmkt.align import vocab_map

    strings = ["", "a", "ab", "abc", "aab", "hello", "naïve\udce4", "abcdefgh"]
    keep = np.array([True, True, True, False, True, True, True, True])
    hashes, owner = vocab_map._deletion_variants(vocab_map._flat(strings), keep)
    expected_strings, expected_owner = [], []
    for o, s in enumerate(strings):
        if keep[o]:
            variants = [s] + [s[:i] + s[i + 1:] for i in range(len(s))]
            variants += [s[:i] + s[i + 1:j] + s[j + 1:] for j in range(len(s)) for i in range(j)]
            expected_strings += variants
            expected_owner += [o] * len(variants)
    expected = vocab_map._variant_hashes(vocab_map._flat(expected_strings))[0]
    assert sorted(zip(hashes.tolist(), owner.tolist(), strict=True)) == sorted(
        zip(expected.tolist(), expected_owner, strict=True))


def test_hash_collisions_do_not_change_the_result(monkeypatch) -> None:
    """With a degenerate hash mix every variant collides: distance 1 falls back to exact
    distances over the length band, distance 2 finds every source crowded, and the map still
    equals the oracle."""
    from fedmkt.align import vocab_map

    monkeypatch.setattr(vocab_map, "_mixed", lambda hashes: np.zeros_like(hashes))
    rng = random.Random(13)
    alphabet = "abcé"
    source = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9))) for _ in range(150)]
    target = [edits(s, rng.choice([1, 1, 2, 3]), rng, alphabet) for s in source[::2]]
    target += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8))) for _ in range(60)]
    both(source, target)
    both(target, source)


@pytest.mark.parametrize("generator", ["prefix", "bitset"])
def test_each_candidate_generator_alone(monkeypatch, generator: str) -> None:
    """The level search with every source on the prefix postings (free verification in the
    cost model), or every source on the bitset counters (free word operations)."""
    from fedmkt.align import vocab_map

    monkeypatch.setattr(vocab_map, "_COST_VERIFY" if generator == "prefix" else "_COST_WORD",
                        0.0)
    rng = random.Random(17)
    alphabet = "abcdeéx"
    source = ["".join(rng.choice(alphabet) for _ in range(rng.randint(2, 9))) for _ in range(300)]
    target = [edits(s, rng.choice([2, 3, 4]), rng, alphabet) for s in source[::2]]
    target += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8))) for _ in range(300)]
    both(source, target)
    both(target, source)
