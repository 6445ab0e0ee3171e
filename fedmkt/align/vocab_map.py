"""The MinED vocabulary map: each source token → the closest target token (DESIGN §4).

For every source string: the target id with the same string if there is one (the smallest such
id); otherwise the target with the smallest Levenshtein distance, ties broken by the
lexicographically smallest target string (Python ``str`` order, i.e. code points), then by the
smallest id. The result is exact and deterministic.

How it is fast (the reference computes one Python ``editdistance`` call per pair, tens of
minutes for 32k × 50k; comparing every source with every target of a similar length, even with
rapidfuzz's SIMD ``cdist``, still takes about a minute for 262k × 49k):

1. Targets are de-duplicated (a string keeps its smallest id) and sorted by string; the
   position in that order, the *rank*, orders candidates exactly as the tie rule does, so the
   answer is always "the smallest (distance, rank)". Sources are searched once per distinct
   string.
2. Exact matches come from a dict.
3. Levenshtein only ever compares a source character with a target character for equality, so
   all characters that occur in no target string are interchangeable: each is replaced by one
   placeholder that occurs in no target either. Sources that become equal share one search.
4. Distance 1 is found without computing any distance: two strings are one edit apart iff one
   is the other with one character deleted, or both give the same string when the character at
   the same position is masked. Every such variant of every string is hashed (64-bit
   polynomial hashes, vectorised with numpy, mixed; their top bits are sorted together with
   the owner); a source's candidate is the smallest rank whose variant hash equals one of the
   source's, and it is checked with an exact distance. A hash collision can only make that
   check fail; such a source is redone with exact distances to every target within one
   character of its length, so the result never depends on the hash.
5. Distance 2, for sources of at least six characters, from deletion neighbourhoods: if
   lev(s, t) ≤ 2, deleting from s the substituted and deleted characters of an optimal
   alignment and from t the substituted and inserted ones gives the same string, so s and t
   share a variant with at most two characters deleted. All such variants are hashed (the
   same hashes, each two-deletion one a single addition of two prefix differences, sorted as
   in 4); sources and targets with an equal hash are candidates (a superset), checked with
   exact distances. A source with a hit takes the smallest such rank; one without is known to
   have no target within 2. Shorter sources, and those whose variants match too many targets,
   are left to step 6.
6. The rest is searched level by level, k = 2 (3 for those known to be beyond 2), 3, …: at
   level k every source not yet resolved is known to have no target within k - 1, so a target
   within k is at exactly k, and the answer is the smallest-rank target within k. Candidates
   for level k are the targets that pass the *bag-distance* bound: a string's characters,
   counted with multiplicity, are features ``(c, j)`` ("at least j + 1 copies of c"); if s
   (n features) misses x of them in t, then lev(s, t) ≥ max(x, x + m - n) (every edit fixes
   at most one missing feature on each side), so t is a candidate only if
   ``x ≤ k - max(0, m - n)`` and ``|m - n| ≤ k``. Two exact ways produce the candidates:

   * *bitsets*: targets are laid out by (length, rank) and each feature has a bitset of the
     targets that lack it. Bit-sliced counters of the missing features are updated with a few
     word operations per feature (a ripple-carry add) over the length band of a batch of
     sources — 64 targets per machine word — and the bound is applied per target length.
     Features are taken rarest first and sources whose band is exhausted leave early.
   * *prefix postings* (for sources with rare characters): a candidate must contain at least
     one of any k - a + 1 features of s (a = features of s that no target has), so the union of
     the band postings of the rarest k - a + 1 features is a superset of the candidates; it is
     filtered by the bound, read from the absent-bitsets.

   Candidates are verified with ``rapidfuzz.process.cpdist`` (exact distances) in rank order,
   in a few rank bands, so that a source stops at the first band holding a target within k;
   a source with none goes to level k + 1. Each candidate is verified once: at a source's first
   level every target within the bound is a candidate, at later levels only those whose bound
   is exactly k (the others were verified before), and the smallest (distance, rank) verified
   so far is remembered, so that a source whose remembered best is at distance k resolves at
   level k once the rank bands before that rank are searched. Each source's first level is
   raised to the bound given by its features absent from every target and by the target
   lengths that exist.
7. A source whose candidates far outnumber what a SIMD pass over its length band would cost
   (checking one candidate costs about as much as ten pairs of ``rapidfuzz.process.cdist``) is
   finished that way instead: exact distances to every target of its length band, then of the
   next length gaps while they can still hold a closer target; targets in rank order, so the
   first minimum is the answer.

The work on the targets alone (code points, the hash tables of 4 and 5, the index of 6) runs on
a second thread from the start, next to the work on the sources; the level search runs its
bitset sources on a thread pool next to its prefix-posting sources. Threads touch disjoint
sources, so the result does not depend on their timing.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rapidfuzz.distance import Levenshtein
from rapidfuzz.process import cdist, cpdist

from fedmkt.align.canonical import CanonicalMode, canonical_vocab
from fedmkt.align.fingerprint import tokenizer_fingerprint

_U64 = np.uint64
_ALL = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
# Polynomial hash base and length salt (odd 64-bit constants; arithmetic wraps modulo 2**64).
_BASE = np.uint64(0x9E37_79B9_7F4A_7C15)
_SALT = np.uint64(0xC2B2_AE3D_27D4_EB4F)
_MIX = np.uint64(0xBF58_476D_1CE4_E5B9)  # odd: multiplying by it is a bijection
# Multiplicities above this are one feature ("at least 127 copies"): only over-counts overlap,
# which keeps the bound a lower bound.
_MAX_COPIES = 127
# Rank tiers, searched in order (upper ends as fractions of the target count): a source that
# finds a target within k in a tier stops there.
_TIERS = (1 / 64, 1 / 16, 1 / 4, 1 / 2, 1.0)
# Cost model for choosing the candidate generator per source (seconds, measured here).
_COST_VERIFY = 150e-9  # one candidate pair checked by cpdist, gather included
_COST_WORD = 0.4e-9  # one 64-target word operation of the bitset counters
# Bitset counter batches hold about this many 64-bit words per level array; they are counted in
# blocks of about _BLOCK_WORDS words per level, small enough to stay in cache (the counters are
# memory-bound otherwise).
_BATCH_WORDS = 1 << 22
_BLOCK_WORDS = 1 << 14
# Source states in the level search (best_rank): not resolved yet / handed to the band search.
_OPEN, _ROUTED = -1, -2
# A source whose candidates (checked so far plus those of the tier at hand) exceed
# _ROUTE_AFTER + band size / _ROUTE_RATIO, and whose first _ROUTE_AFTER candidates of the tier
# miss, is finished by the band search instead: checking a candidate costs about as much as
# _ROUTE_RATIO pairs of a SIMD cdist.
_ROUTE_AFTER, _ROUTE_RATIO = 32, 10
# Entries of one cdist result block in the band search (int32): 8M entries = 32 MiB.
_BLOCK_ENTRIES = 8_000_000
# cpdist calls with fewer pairs run on one thread (starting threads costs more than it saves).
_PARALLEL_PAIRS = 20_000
# A source's candidates in one tier are checked in rank order in rounds ending at these counts.
_VERIFY_ROUNDS = (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 1 << 62)
# Candidate pairs generated per batch from the prefix postings (bounds memory).
_VERIFY_CHUNK = 1 << 20
# Level 2 by deletion neighbourhoods (module docstring, 5) for pending strings this long or more
# (shorter ones match far too many targets), unless their variants match more than this often.
_TWO_MIN_LENGTH = 6
_TWO_MAX_MATCHES = 4096


@dataclass(frozen=True)
class _Targets:
    """The target vocabulary prepared for searching.

    strings: distinct target strings sorted in ``str`` order; index = rank.
    ids: the smallest target id of each string, by rank (int64).
    rank_of: string → rank.
    lengths: length of each string, by rank (int64).
    alphabet: every character that occurs in a target string.
    flat: the strings as code points (:func:`_flat`), shared by the searches.
    obj: the strings as an object array (for gathering candidates).
    """

    strings: list[str]
    ids: np.ndarray
    rank_of: dict[str, int]
    lengths: np.ndarray
    alphabet: frozenset[str]
    flat: _Flat
    obj: np.ndarray


def _distinct_targets(target: Sequence[str]) -> tuple[list[str], dict[str, int]]:
    """Distinct target strings in ``str`` order, and the smallest id of each."""
    smallest: dict[str, int] = {}
    for i, t in enumerate(target):
        smallest.setdefault(t, i)
    return sorted(smallest), smallest


def _prepare_targets(target: Sequence[str], strings: list[str] | None = None,
                     smallest: dict[str, int] | None = None, flat: Any = None) -> _Targets:
    """``strings``, ``smallest``: from :func:`_distinct_targets` when known; ``flat``: their
    :class:`_Flat`, or a future of it (computed on another thread meanwhile)."""
    if strings is None or smallest is None:
        strings, smallest = _distinct_targets(target)
    ids = np.fromiter(map(smallest.__getitem__, strings), dtype=np.int64, count=len(strings))
    rank_of = dict(zip(strings, range(len(strings)), strict=True))
    alphabet = frozenset("".join(strings))
    flat = _flat(strings) if flat is None else flat.result() if hasattr(flat, "result") else flat
    return _Targets(strings, ids, rank_of, flat.lengths, alphabet, flat,
                    np.array(strings, dtype=object))


def _unused_character(used: set[str] | frozenset[str]) -> str:
    """A character not in ``used`` (private-use areas first)."""
    for code in (*range(0xE000, 0xF900), *range(0xF0000, 0x110000)):
        if chr(code) not in used:
            return chr(code)
    raise ValueError("every private-use character occurs in the vocabularies")


def _collapse_foreign(pending: Iterable[str], targets: _Targets) -> dict[str, str]:
    """Each pending string → the same string with every character that occurs in no target
    replaced by one placeholder (equal distances to every target; see the module docstring)."""
    pending = list(pending)
    foreign = set("".join(pending)) - targets.alphabet
    if not foreign:
        return {s: s for s in pending}
    placeholder = _unused_character(targets.alphabet)
    table = str.maketrans(dict.fromkeys(foreign, placeholder))
    disjoint = frozenset(foreign).isdisjoint
    return {s: s if disjoint(s) else s.translate(table) for s in pending}


# --------------------------------------------------------------------------- flat code points


@dataclass(frozen=True)
class _Flat:
    """Strings as one array of code points: string i is ``codes[start[i]:start[i] + lengths[i]]``.

    owner: the string of each code point; offset: its position in that string.
    memo: hashes computed from it (see :func:`_prefix_hashes`, :func:`_variant_hashes`).
    """

    codes: np.ndarray
    start: np.ndarray
    lengths: np.ndarray
    owner: np.ndarray
    offset: np.ndarray
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def _flat(strings: Sequence[str]) -> _Flat:
    lengths = np.fromiter(map(len, strings), dtype=np.int64, count=len(strings))
    # surrogatepass: surrogate-escaped byte tokens are lone surrogates; each is one code point.
    raw = "".join(strings).encode("utf-32-le", "surrogatepass")
    codes = np.frombuffer(raw, dtype=np.uint32).astype(np.int64)
    start = np.zeros(len(strings), dtype=np.int64)
    np.cumsum(lengths[:-1], out=start[1:])
    owner = np.repeat(np.arange(len(strings), dtype=np.int64), lengths)
    offset = np.arange(codes.size, dtype=np.int64) - start[owner]
    return _Flat(codes, start, lengths, owner, offset)


def _first_of_runs(sorted_keys: np.ndarray) -> np.ndarray:
    """Mask of the first element of each run of equal values in a sorted array."""
    first = np.ones(sorted_keys.size, dtype=bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    return first


# --------------------------------------------------------------------------- distance 1


def _powers(count: int) -> np.ndarray:
    """_BASE ** i for i = 0 … count - 1 (modulo 2**64)."""
    powers = np.ones(max(count, 1), dtype=_U64)
    np.cumprod(np.full(powers.size - 1, _BASE, dtype=_U64), out=powers[1:])
    return powers


def _prefix_hashes(flat: _Flat) -> tuple[np.ndarray, np.ndarray]:
    """Polynomial hashes of every prefix of every string: ``prefix[slot[i] + j]`` hashes the
    first j characters of string i (j = 0 … len; a character counts as its code + 1)."""
    if "prefix" in flat.memo:
        return flat.memo["prefix"]
    n_str = flat.lengths.size
    max_len = int(flat.lengths.max(initial=0))
    prefix = np.zeros(flat.codes.size + n_str, dtype=_U64)
    slot = flat.start + np.arange(n_str, dtype=np.int64)
    by_length = np.argsort(-flat.lengths, kind="stable")
    count_longer = np.searchsorted(-flat.lengths[by_length], -np.arange(max_len + 1), "left")
    digits = (flat.codes + 1).astype(_U64)
    for j in range(max_len):
        live = by_length[:count_longer[j]]  # strings longer than j
        at = slot[live] + j
        prefix[at + 1] = prefix[at] * _BASE + digits[flat.start[live] + j]
    flat.memo["prefix"] = prefix, slot
    return prefix, slot


def _variant_hashes(flat: _Flat) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Salted hashes of each string, of each one-deletion variant and of each masked variant.

    Returns (exact [strings], deleted [code points], masked [code points]); the variants of a
    code point's position, in the order of ``flat.codes``. A masked position counts as code 0
    (real characters count as code + 1), so masked variants differ from every plain string.
    """
    if "variants" in flat.memo:
        return flat.memo["variants"]
    powers = _powers(int(flat.lengths.max(initial=0)) + 1)
    prefix, slot = _prefix_hashes(flat)
    length = flat.lengths
    exact = prefix[slot + length] ^ (length.astype(_U64) * _SALT)
    own, pos = flat.owner, flat.offset
    own_len = length[own]
    base = slot[own]
    head = prefix[base + pos]
    whole = prefix[base + own_len]
    after = prefix[base + pos + 1]
    tail_len = own_len - pos - 1
    tail = whole - after * powers[tail_len]
    deleted = (head * powers[tail_len] + tail) ^ ((own_len - 1).astype(_U64) * _SALT)
    masked = (head * powers[tail_len + 1] + tail) ^ (own_len.astype(_U64) * _SALT)
    flat.memo["variants"] = exact, deleted, masked
    return exact, deleted, masked


def _mixed(hashes: np.ndarray) -> np.ndarray:
    """A bijection of 64-bit hashes that spreads every bit upwards (the last character only
    reaches the low bits of a polynomial hash), so that the top bits alone can be compared."""
    mixed = hashes ^ (hashes >> _U64(31))
    mixed *= _MIX
    mixed ^= mixed >> _U64(29)
    return mixed


def _packed_sort(hashes: np.ndarray, owner: np.ndarray, bits: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (hash, owner) pairs, packed: the top 64 - ``bits`` bits of the mixed hash above
    the owner (< 2**bits); returns (hash part, owner), both sorted by (hash part, owner). A
    shorter hash only makes more pairs equal; sorting plain keys is much faster than argsort."""
    low = (_U64(1) << _U64(bits)) - _U64(1)
    key = np.sort((_mixed(hashes) & ~low) | owner.astype(_U64))
    return key & ~low, (key & low).astype(np.int64)


def _key_bits(*counts: int) -> int:
    """Bits for owners below every count (string indices, ranks)."""
    return max(max(counts, default=1), 1).bit_length()


def _one_tables(flat: _Flat, bits: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The target tables for distance 1: (distinct packed hash, smallest rank with it) of the
    one-deletion variants, of the strings and of the masked variants (``flat`` holds the
    targets in rank order, so a string's index is its rank)."""
    exact, deleted, masked = _variant_hashes(flat)
    rank = np.arange(flat.lengths.size, dtype=np.int64)
    tables = []
    for hashes, owner in ((deleted, flat.owner), (exact, rank), (masked, flat.owner)):
        keys, ranks = _packed_sort(hashes, owner, bits)
        first = _first_of_runs(keys)  # sorted by (key, rank): the smallest rank comes first
        tables.append((keys[first], ranks[first]))
    return tables


def _look_up(table: tuple[np.ndarray, np.ndarray], hashes: np.ndarray, owner: np.ndarray,
             bits: int, best: np.ndarray) -> None:
    """Lower ``best[o]`` to the table's rank for every query hash (of owner o) it holds."""
    keys, ranks = table
    if keys.size == 0 or hashes.size == 0:
        return
    query, own = _packed_sort(hashes, owner, bits)
    where = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    hit = keys[where] == query
    np.minimum.at(best, own[hit], ranks[where[hit]])


def _distance_one(pending: Sequence[str], targets: _Targets, workers: int,
                  tables: list[tuple[np.ndarray, np.ndarray]] | None = None,
                  bits: int | None = None) -> dict[str, int]:
    """Smallest rank at distance exactly 1, for every pending string that has one.

    ``pending`` strings have no exact match, so every target found here is at distance 1.
    t is one edit from s iff t is s with one character deleted, s is t with one character
    deleted (an insertion), or s and t have the same length and the same string with the
    character at one position i masked (a substitution). Variants are compared by (the top
    bits of mixed) hashes and the winner is checked exactly; a source whose check fails (a
    collision hid the true winner) is redone by :func:`_distance_one_exact`. ``tables``:
    :func:`_one_tables` of the targets with ``bits`` (computed here when not given).
    """
    if not pending:
        return {}
    none = len(targets.strings)
    if tables is None or bits is None or (1 << bits) <= len(pending):
        bits = _key_bits(len(pending), none)
        tables = _one_tables(targets.flat, bits)
    s_flat = _flat(pending)
    s_exact, s_deleted, s_masked = _variant_hashes(s_flat)
    best = np.full(len(pending), none, dtype=np.int64)
    own = np.arange(len(pending), dtype=np.int64)
    for table, hashes, owner in zip(tables, (s_exact, s_deleted, s_masked),
                                    (own, s_flat.owner, s_flat.owner), strict=True):
        _look_up(table, hashes, owner, bits, best)
    hit = np.flatnonzero(best < none)
    found: dict[str, int] = {}
    if hit.size:
        pending_obj = np.array(pending, dtype=object)
        checked = cpdist(pending_obj[hit], [targets.strings[r] for r in best[hit].tolist()],
                         scorer=Levenshtein.distance, score_cutoff=1, dtype=np.int32,
                         workers=workers if hit.size >= _PARALLEL_PAIRS else 1)
        ok = checked == 1
        found = dict(zip(pending_obj[hit[ok]].tolist(), best[hit[ok]].tolist(), strict=True))
        if not ok.all():  # a hash collision: redo those sources exactly
            found.update(_distance_one_exact(pending_obj[hit[~ok]].tolist(), targets, workers))
    return found


def _distance_one_exact(pending: Sequence[str], targets: _Targets, workers: int = 1
                        ) -> dict[str, int]:
    """:func:`_distance_one` without hashes (the collision fallback): exact distances from each
    pending string to every target within one character of its length, in rank order (the
    first at distance 1 wins)."""
    found: dict[str, int] = {}
    if not pending:
        return found
    lengths = targets.lengths
    n = np.fromiter(map(len, pending), dtype=np.int64, count=len(pending))
    for length in _distinct(n):
        group = np.flatnonzero(n == length)
        ranks = np.flatnonzero(np.abs(lengths - length) <= 1)
        if ranks.size == 0:
            continue
        choices = [targets.strings[r] for r in ranks.tolist()]
        step = max(1, _BLOCK_ENTRIES // ranks.size)
        for r0 in range(0, group.size, step):
            rows = group[r0:r0 + step].tolist()
            d = cdist([pending[i] for i in rows], choices, scorer=Levenshtein.distance,
                      score_cutoff=1, dtype=np.int32, workers=workers) == 1
            at = d.argmax(axis=1)
            for i, a, any_hit in zip(rows, at.tolist(), d.any(axis=1).tolist(), strict=True):
                if any_hit:
                    found[pending[i]] = int(ranks[a])
    return found


# --------------------------------------------------------------------------- distance 2


def _deletion_variants(flat: _Flat, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Salted hashes (as in :func:`_variant_hashes`) of every string ``keep`` selects, of its
    one-deletion and of its two-deletion variants; returns (hashes, string index).

    With P the prefix hashes of a string of length L and d_p = P[p] - P[p + 1], deleting the
    characters at i < j gives P[L] + d_i B^(L-2-i) + d_j B^(L-1-j) (and deleting only i gives
    P[L] + d_i B^(L-1-i)): one addition per pair, the pairs of a length laid out as a table."""
    exact, deleted, _ = _variant_hashes(flat)
    prefix, slot = _prefix_hashes(flat)
    length = flat.lengths
    powers = _powers(int(length.max(initial=0)) + 1)
    own, pos = flat.owner, flat.offset
    at = slot[own] + pos
    diff = prefix[at] - prefix[at + 1]
    expo = length[own] - 2 - pos
    first = diff * powers[np.maximum(expo, 0)]  # i deleted first (never the last position)
    second = diff * powers[expo + 1]  # j deleted second
    whole = prefix[slot + length]
    one = keep[own]
    hashes, owners = [exact[keep], deleted[one]], [np.flatnonzero(keep), own[one]]
    strings = np.flatnonzero(keep & (length >= 2))
    strings = strings[np.argsort(length[strings], kind="stable")]
    cuts = np.flatnonzero(np.diff(length[strings])) + 1
    for group in np.split(strings, cuts) if strings.size else []:
        size = int(length[group[0]])
        points = flat.start[group][:, None] + np.arange(size)
        i, j = np.triu_indices(size, 1)
        two = first[points][:, i]
        two += second[points][:, j]
        two += whole[group][:, None]
        two ^= _U64(((size - 2) * int(_SALT)) & 0xFFFF_FFFF_FFFF_FFFF)
        hashes.append(two.reshape(-1))
        owners.append(np.repeat(group, i.size))
    return np.concatenate(hashes), np.concatenate(owners)


@dataclass(frozen=True)
class _TwoKeys:
    """The targets' deletion-neighbourhood keys for :func:`_distance_two`: those of the targets
    of lengths lo … hi, packed with ``bits`` (:func:`_packed_sort`), as runs of equal hash:
    ``value[u]`` is held by the ranks ``rank[start[u]:start[u] + count[u]]``."""

    lo: int
    hi: int
    bits: int
    rank: np.ndarray
    value: np.ndarray
    start: np.ndarray
    count: np.ndarray


def _two_keys(flat: _Flat, lo: int, hi: int, bits: int) -> _TwoKeys:
    keep = (flat.lengths >= lo) & (flat.lengths <= hi)
    hashes, rank = _packed_sort(*_deletion_variants(flat, keep), bits)
    start = np.flatnonzero(_first_of_runs(hashes))
    count = np.diff(np.append(start, hashes.size))
    return _TwoKeys(lo, hi, bits, rank, hashes[start], start, count)


def _distance_two(pending: Sequence[str], targets: _Targets, workers: int,
                  target_keys: _TwoKeys | None = None) -> tuple[dict[str, int], np.ndarray]:
    """Level 2 for the pending strings of length >= _TWO_MIN_LENGTH, by deletion
    neighbourhoods: lev(s, t) <= 2 implies that s and t, each with at most two characters
    deleted, give the same string (delete from s the substituted and deleted characters of an
    optimal alignment, from t the substituted and inserted ones). Every such variant is hashed;
    pairs with an equal hash are candidates (a superset: hash collisions and pairs up to four
    edits apart), checked with exact distances. ``target_keys``: :func:`_two_keys` of the
    targets, used where it covers the lengths needed (computed here otherwise).

    ``pending`` strings have no target within 1. Returns (string → smallest rank at distance 2,
    for those that have one; a mask over ``pending``: known to have no target within 2).
    """
    none = np.zeros(len(pending), dtype=bool)
    n = np.fromiter(map(len, pending), dtype=np.int64, count=len(pending))
    chosen = n >= _TWO_MIN_LENGTH
    if not chosen.any():
        return {}, none
    s_flat = _flat(pending)
    lo_len, hi_len = int(n[chosen].min()) - 2, int(n[chosen].max()) + 2
    pre = target_keys
    if pre is not None and pre.lo <= lo_len and hi_len <= pre.hi and len(pending) < 1 << pre.bits:
        s_hash, s_src = _packed_sort(*_deletion_variants(s_flat, chosen), pre.bits)
    else:
        bits = _key_bits(len(pending), len(targets.strings))
        with ThreadPoolExecutor(1) as side:  # numpy releases the GIL while it sorts
            job = side.submit(_two_keys, targets.flat, lo_len, hi_len, bits)
            s_hash, s_src = _packed_sort(*_deletion_variants(s_flat, chosen), bits)
            pre = job.result()
    if pre.value.size:
        at = np.minimum(np.searchsorted(pre.value, s_hash), pre.value.size - 1)
        lo = pre.start[at]
        count = np.where(pre.value[at] == s_hash, pre.count[at], 0)
    else:
        lo = count = np.zeros(s_hash.size, dtype=np.int64)
    # sources whose neighbourhoods match too much are left to the level search
    per_source = np.bincount(s_src, weights=count, minlength=len(pending))
    crowded = per_source > _TWO_MAX_MATCHES
    ok = ~crowded[s_src] & (count > 0)
    lo, count, src = lo[ok], count[ok], s_src[ok]
    entry = np.repeat(lo - np.cumsum(count) + count, count) + np.arange(int(count.sum()))
    size = len(targets.strings)
    key = np.sort(np.repeat(src, count) * size + pre.rank[entry])
    key = key[_first_of_runs(key)]  # (source, rank) pairs, each once, in rank order
    src, rank = key // size, key % size
    found: dict[str, int] = {}
    if key.size:
        pending_obj = np.array(pending, dtype=object)
        d = cpdist(pending_obj[src], targets.obj[rank], scorer=Levenshtein.distance,
                   score_cutoff=2, dtype=np.int32,
                   workers=workers if key.size >= _PARALLEL_PAIRS else 1)
        hit = d <= 2
        src, rank = src[hit], rank[hit]
        first = _first_of_runs(src)
        found = dict(zip(pending_obj[src[first]].tolist(), rank[first].tolist(), strict=True))
    beyond = chosen & ~crowded
    beyond[src] = False
    return found, beyond


# --------------------------------------------------------------------------- distance ≥ 2


def _feature_codes(flat: _Flat) -> np.ndarray:
    """The feature ``(c, j)`` of each code point: c with j copies of c before it in its string,
    as ``c * 128 + min(j, 127)``."""
    key = flat.owner * 0x20_0000 + flat.codes  # code points < 2**21
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    first = _first_of_runs(sorted_key)
    run_start = np.maximum.accumulate(np.where(first, np.arange(key.size), 0))
    copies = np.arange(key.size) - run_start
    out = np.empty(key.size, dtype=np.int64)
    out[order] = flat.codes[order] * (_MAX_COPIES + 1) + np.minimum(copies, _MAX_COPIES)
    return out


class _Index:
    """Targets laid out for the level search.

    Ranks are cut into tiers (:data:`_TIERS`); positions order the targets by (tier, length,
    rank), so the targets of one tier and one length are a contiguous run of positions
    ``start[t, m] … start[t, m + 1]`` and ``rank_at[p]`` is the rank at position p. Features
    are numbered 0 … F - 1; ``posting`` holds ``fid * R + position`` sorted, one entry per
    (feature, target that has it). Bitsets of the targets *lacking* a feature (bit p of word
    p // 64) are built on demand.
    """

    def __init__(self, flat: _Flat) -> None:
        """``flat``: the target strings in rank order."""
        self.lengths = lengths = flat.lengths
        self.size = size = lengths.size
        self.max_length = max_length = int(lengths.max(initial=0))
        cuts = [0] + [max(1, int(np.ceil(size * f))) for f in _TIERS[:-1]] + [size]
        self.tier_cut = np.maximum.accumulate(np.array(cuts, dtype=np.int64))
        tier = np.searchsorted(self.tier_cut, np.arange(size), "right") - 1
        # ranks ascend within (tier, length) because lexsort is stable over rank order
        self.rank_at = np.lexsort((lengths, tier))
        position = np.empty(size, dtype=np.int64)
        position[self.rank_at] = np.arange(size)
        cells = np.bincount(tier * (max_length + 1) + lengths,
                            minlength=len(_TIERS) * (max_length + 1))
        start = np.zeros(len(_TIERS) * (max_length + 1) + 1, dtype=np.int64)
        np.cumsum(cells, out=start[1:])
        # start[t, m]: first position of tier t with length >= m (m = max_length + 1: tier end)
        self.start = np.concatenate([start[:-1].reshape(len(_TIERS), max_length + 1),
                                     start[max_length + 1::max_length + 1, None]], axis=1)
        self.start_rows = self.start.tolist()
        self.length_count = np.bincount(lengths, minlength=max_length + 1)
        self.length_cum = np.concatenate([[0], np.cumsum(self.length_count)])
        codes = _feature_codes(flat)
        order = np.argsort(codes, kind="stable")
        sorted_codes = codes[order]
        first = _first_of_runs(sorted_codes)
        self.feature_code = sorted_codes[first]
        fid = np.empty(codes.size, dtype=np.int64)
        fid[order] = np.cumsum(first) - 1
        self.posting = np.sort(fid * size + position[flat.owner])
        # one extra trailing 0 so that fid -1 (no target has it) reads a count of 0
        self.posting_count = np.zeros(self.feature_code.size + 1, dtype=np.int64)
        self.posting_count[:-1] = np.diff(np.searchsorted(
            self.posting, np.arange(self.feature_code.size + 1, dtype=np.int64) * size))
        self.words = (size + 63) // 64
        self._row_of = np.full(self.feature_code.size, -1, dtype=np.int64)
        self._absent = np.zeros((64, self.words), dtype=_U64)  # row 0: never absent
        self._rows = 1
        self._lock = threading.Lock()

    def fids(self, codes: np.ndarray) -> np.ndarray:
        """Feature id of each code, -1 where no target has it."""
        if self.feature_code.size == 0:
            return np.full(codes.size, -1, dtype=np.int64)
        where = np.minimum(np.searchsorted(self.feature_code, codes), self.feature_code.size - 1)
        return np.where(self.feature_code[where] == codes, where, -1)

    def band(self, tier: int, n: int | np.ndarray, k: int) -> tuple[Any, Any]:
        """Positions [lo, hi) of the tier's targets with ``|m - n| <= k``."""
        top = self.max_length + 1
        if isinstance(n, int):  # the common scalar case, without numpy's clip overhead
            row = self.start_rows[tier]
            return row[min(max(n - k, 0), top)], row[min(max(n + k + 1, 0), top)]
        lo = np.clip(n - k, 0, top)
        hi = np.clip(n + k + 1, 0, top)
        return self.start[tier, lo], self.start[tier, hi]

    def band_size(self, n: np.ndarray, k: int) -> np.ndarray:
        """How many targets have ``|m - n| <= k``."""
        lo = np.clip(n - k, 0, self.max_length + 1)
        hi = np.clip(n + k + 1, 0, self.max_length + 1)
        return self.length_cum[hi] - self.length_cum[lo]

    def absent_rows(self, fid: np.ndarray) -> np.ndarray:
        """Row of each feature's absent-bitset (0, never absent, for fid < 0); builds new ones."""
        real = fid >= 0
        with self._lock:  # searches on other threads build rows too (rows never move)
            new = fid[real]
            new = np.sort(new[self._row_of[new] < 0])
            if new.size:
                self._build(new[_first_of_runs(new)])
            rows = np.zeros(fid.shape, dtype=np.int64)
            rows[real] = self._row_of[fid[real]]
        return rows

    def _build(self, new: np.ndarray) -> None:
        first_row = self._rows
        lo = np.searchsorted(self.posting, new * self.size)
        count = self.posting_count[new]
        entry = np.repeat(lo - np.cumsum(count) + count, count) + np.arange(count.sum())
        local = np.repeat(np.arange(new.size, dtype=np.int64), count)
        position = self.posting[entry] - new[local] * self.size
        cell = local * self.words + (position >> 6)  # ascending: postings ascend per feature
        bit = np.left_shift(_U64(1), (position & 63).astype(_U64))
        rows = np.full((new.size, self.words), _ALL, dtype=_U64)
        if cell.size:
            starts = np.flatnonzero(_first_of_runs(cell))
            present = np.add.reduceat(bit, starts)  # distinct bits: the sum is the union
            rows.reshape(-1)[cell[starts]] = ~present
        need = first_row + new.size
        if need > self._absent.shape[0]:
            grown = np.empty((max(need, 2 * self._absent.shape[0]), self.words), dtype=_U64)
            grown[:first_row] = self._absent[:first_row]
            self._absent = grown
        self._absent[first_row:need] = rows
        self._rows = need
        self._row_of[new] = first_row + np.arange(new.size)

    @property
    def absent(self) -> np.ndarray:
        """Absent-target bitsets, one row per built feature (row 0: never absent)."""
        return self._absent


def _range_mask(lo: int, hi: int, w0: int, words: int) -> np.ndarray:
    """Bits of positions [lo, hi) within words [w0, w0 + words), as uint64 words."""
    bits = np.zeros(words * 64, dtype=bool)
    bits[max(lo - w0 * 64, 0):max(hi - w0 * 64, 0)] = True
    return np.packbits(bits, bitorder="little").view(_U64)


class _LevelSearch:
    """The search for the sources not resolved at distance ≤ 1 or 2 (module docstring, 6)."""

    def __init__(self, rest: list[str], targets: _Targets, workers: int,
                 index: _Index | None = None, beyond_two: np.ndarray | None = None) -> None:
        self.rest = rest
        self.beyond_two = (np.zeros(len(rest), dtype=bool) if beyond_two is None
                           else beyond_two)
        self.workers = workers
        self.index = index = _Index(targets.flat) if index is None else index
        self.rest_obj = np.array(rest, dtype=object)
        self.target_obj = targets.obj
        flat = _flat(rest)
        self.n = flat.lengths
        fid = index.fids(_feature_codes(flat))
        absent = fid < 0
        self.base = np.bincount(flat.owner[absent], minlength=len(rest)).astype(np.int64)
        # present features of each source, rarest first (ties by fid), in one flat array
        count = index.posting_count[fid]
        keep = ~absent
        order = np.lexsort((fid[keep], count[keep], flat.owner[keep]))
        self.feat = fid[keep][order]
        self.feat_count = count[keep][order]
        self.feat_start = np.zeros(len(rest) + 1, dtype=np.int64)
        np.cumsum(np.bincount(flat.owner[keep], minlength=len(rest)), out=self.feat_start[1:])
        self.best_rank = np.full(len(rest), _OPEN, dtype=np.int64)
        self.routed_level = np.zeros(len(rest), dtype=np.int64)
        self.checked = np.zeros(len(rest), dtype=np.int64)  # candidates checked per source
        # the smallest (distance, rank) among each source's verified candidates, as
        # distance * size + rank: every candidate is verified once, at the level of its bound
        self.memo = np.full(len(rest), np.iinfo(np.int64).max, dtype=np.int64)
        self.first_level = np.zeros(len(rest), dtype=np.int64)
        self.bar: Any = None
        self.lock = threading.Lock()
        self.threads = (os.cpu_count() or 1) if workers < 0 else max(1, workers)
        self.rank_bits = _key_bits(index.size)  # (source, rank) keys: source << bits | rank

    def run(self, bar: Any) -> dict[str, int]:
        """Resolve every source; returns string → rank."""
        self.bar = bar
        index, n = self.index, self.n
        lengths = np.flatnonzero(index.length_count)  # target lengths that exist
        gap = (np.abs(n[:, None] - lengths[None, :]).min(axis=1) if lengths.size
               else n)
        level = np.maximum(np.maximum(self.base, gap), np.where(self.beyond_two, 3, 2))
        self.first_level[:] = level
        todo = np.arange(len(self.rest), dtype=np.int64)
        while todo.size:
            k = int(level[todo].min())
            now = todo[level[todo] == k]
            use_prefix = self._prefers_prefix(now, k)
            # the bitset search (it runs its sources to the end) works next to this level's
            # prefix postings: disjoint sources, and the bitsets are built under a lock
            with ThreadPoolExecutor(1) as side:
                job = side.submit(self._bitset_search, now[~use_prefix], k)
                self._prefix_level(now[use_prefix], k)
                job.result()
            level[now] = k + 1
            todo = todo[self.best_rank[todo] == _OPEN]
        routed = np.flatnonzero(self.best_rank == _ROUTED)
        if routed.size:
            self._band_search(routed, self.routed_level[routed])
        return dict(zip(self.rest, self.best_rank.tolist(), strict=True))

    def _resolve(self, src: np.ndarray, rank: np.ndarray) -> None:
        self.best_rank[src] = rank
        if self.bar is not None:
            with self.lock:
                self.bar.update(src.size)

    # ------------------------------------------------------------------ prefix postings

    def _prefix_features(self, sources: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(source slot, fid) of the k - a + 1 rarest present features of each source, where
        possible (a source with fewer present features gets none)."""
        present = self.feat_start[sources + 1] - self.feat_start[sources]
        want = k - self.base[sources] + 1
        reps = np.where(want <= present, want, 0)
        slot = np.repeat(np.arange(sources.size), reps)
        offset = np.arange(slot.size) - np.repeat(np.cumsum(reps) - reps, reps)
        return slot, self.feat_start[sources[slot]] + offset

    def _prefers_prefix(self, sources: np.ndarray, k: int) -> np.ndarray:
        """Whether the prefix postings look cheaper than the bitset counters for each source."""
        index = self.index
        n = self.n[sources]
        band = index.band_size(n, k)
        slot, at = self._prefix_features(sources, k)
        cost = np.full(sources.size, np.inf)
        cost[np.bincount(slot, minlength=sources.size) > 0] = 0.0
        share = band[slot] / max(index.size, 1)  # postings in the band, roughly
        np.add.at(cost, slot, self.feat_count[at] * share * _COST_VERIFY)
        present = self.feat_start[sources + 1] - self.feat_start[sources]
        words = band / 64 + len(_TIERS)
        planes = np.log2(present + 2)
        bitset = (present + 2 * (k + 1)) * 2 * planes * words * _COST_WORD
        return cost <= bitset

    def _prefix_level(self, sources: np.ndarray, k: int) -> None:
        """Level k for ``sources`` from the band postings of their rarest features."""
        if sources.size == 0:
            return
        index = self.index
        slot, at = self._prefix_features(sources, k)
        fid = self.feat[at]
        n = self.n[sources[slot]]
        # the postings are looked up by feature (queries in order are far faster)
        by_fid = np.argsort(fid, kind="stable")
        for t in range(len(_TIERS)):
            if t:
                self._resolve_memo(sources, k, int(index.tier_cut[t]))
            live = self.best_rank[sources[slot]] == _OPEN
            if not live.all():
                slot, fid, n = slot[live], fid[live], n[live]
                by_fid = (np.cumsum(live) - 1)[by_fid[live[by_fid]]]
            if slot.size == 0:
                return
            p0, p1 = index.band(t, n[by_fid], k)
            base = fid[by_fid] * index.size
            lo, hi = np.empty_like(fid), np.empty_like(fid)
            lo[by_fid] = np.searchsorted(index.posting, base + p0)
            hi[by_fid] = np.searchsorted(index.posting, base + p1)
            count = hi - lo
            # batches end between sources: _verify needs all of a source's candidates at once
            starts = np.flatnonzero(_first_of_runs(slot))
            ends = np.append(starts[1:], slot.size)
            for part in _chunks(np.add.reduceat(count, starts), _VERIFY_CHUNK):
                a, b = int(starts[part.start]), int(ends[part.stop - 1])
                c = count[a:b]
                entry = np.repeat(lo[a:b] - np.cumsum(c) + c, c) + np.arange(c.sum())
                position = index.posting[entry] - np.repeat(fid[a:b], c) * index.size
                src = sources[np.repeat(slot[a:b], c)]
                keep = self._bag_passes(src, position, k)
                self._verify(src[keep], index.rank_at[position[keep]], k)
        self._resolve_memo(sources, k, index.size)

    def _bag_passes(self, src: np.ndarray, position: np.ndarray, k: int) -> np.ndarray:
        """Whether target ``position`` passes the bag-distance bound of level k for ``src``
        (elementwise), read from the absent-bitsets: the x features of s missing in t must
        satisfy x <= k - max(0, m - n)."""
        passes = np.zeros(src.size, dtype=bool)
        if src.size == 0:
            return passes
        index = self.index
        distinct = np.sort(src)
        distinct = distinct[_first_of_runs(distinct)]
        local = np.searchsorted(distinct, src)
        start = self.feat_start[distinct]
        have = self.feat_start[distinct + 1] - start
        slot = np.arange(int(have.max(initial=0)))
        at = np.minimum(start[:, None] + slot[None, :], max(self.feat.size - 1, 0))
        fid = np.where(slot[None, :] < have[:, None], self.feat[at], -1)
        rows = index.absent_rows(fid.reshape(-1)).reshape(fid.shape)  # row 0: never absent
        # candidates by decreasing feature count, so that feature slot j reads a prefix
        order = np.argsort(-have[local], kind="stable")
        local_sorted = local[order]
        src_sorted = src[order]
        allowed = k - self.base[src_sorted] - np.maximum(
            index.lengths[index.rank_at[position[order]]] - self.n[src_sorted], 0)
        flat_absent = index.absent.reshape(-1)
        cell = (position >> 6)[order]
        bit = (position & 63).astype(_U64)[order]
        missing = np.zeros(order.size, dtype=np.int64)
        reach = np.searchsorted(-have[local_sorted], -slot, "left")  # have > j
        check = 2  # candidates already past the bound are dropped from time to time
        for j in slot.tolist():
            if j == check:
                check *= 2
                alive = missing <= allowed
                if alive.sum() * 4 < alive.size * 3:  # keeps the order, so reach stays valid
                    keep = np.flatnonzero(alive)
                    order, local_sorted, allowed = order[keep], local_sorted[keep], allowed[keep]
                    cell, bit, missing = cell[keep], bit[keep], missing[keep]
                    reach = np.searchsorted(-have[local_sorted], -slot, "left")
            end = int(reach[j])
            words = flat_absent.take(rows[local_sorted[:end], j] * index.words + cell[:end])
            missing[:end] += ((words >> bit[:end]) & _U64(1)).astype(np.int64)
        # a candidate whose bound is below k was verified at an earlier level
        fresh = self.first_level[src[order]] == k
        passes[order] = np.where(fresh, missing <= allowed, missing == allowed)
        return passes

    def _resolve_memo(self, sources: np.ndarray, k: int, rank_end: int) -> None:
        """Resolve the open ``sources`` whose best verified candidate is at distance k with a
        rank below ``rank_end`` (every rank tier before rank_end has been searched at k)."""
        size = self.index.size
        memo = self.memo[sources]
        at_k = (memo >= k * size) & (memo < k * size + rank_end)
        done = (self.best_rank[sources] == _OPEN) & at_k
        if done.any():
            self._resolve(sources[done], memo[done] - k * size)

    # ------------------------------------------------------------------ verification

    def _verify(self, src: np.ndarray, rank: np.ndarray, k: int, workers: int | None = None
                ) -> None:
        """Check candidate pairs (none within k - 1, all in one rank tier that no earlier tier
        resolved); a source with a target within k takes the smallest such rank. Each source's
        candidates are checked in rank order, a few at a time, up to its first hit; their exact
        distances update the source's smallest verified (distance, rank), ``memo``."""
        index = self.index
        size = index.size
        # open, and not after the best verified candidate when that one is at distance k
        live = (self.best_rank[src] == _OPEN) & (k * size + rank < self.memo[src])
        src, rank = src[live], rank[live]
        if src.size == 0:
            return
        key = np.sort((src << self.rank_bits) | rank)  # by (source, rank)
        src, rank = key >> self.rank_bits, key & ((1 << self.rank_bits) - 1)
        starts = np.flatnonzero(_first_of_runs(src))
        owner = src[starts]
        total = np.diff(np.append(starts, src.size))  # candidates of each source
        # a source with far more candidates than a SIMD pass over its length band would cost
        # goes to the band search once its first candidates miss
        count = total + self.checked[owner]
        heavy = count > _ROUTE_AFTER + index.band_size(self.n[owner], k) / _ROUTE_RATIO
        heavy_src = owner[heavy]
        longest = int(total.max())
        done = 0  # each source's first ``done`` candidates are checked
        for bound in _VERIFY_ROUNDS:
            if bound > _ROUTE_AFTER and heavy_src.size:
                open_heavy = heavy_src[self.best_rank[heavy_src] == _OPEN]
                self.best_rank[open_heavy] = _ROUTED
                self.routed_level[open_heavy] = k
                heavy_src = heavy_src[:0]
            if longest <= done:
                break
            now = np.flatnonzero((total > done) & (self.best_rank[owner] == _OPEN))
            if now.size:
                # candidates done … bound - 1 of each open source, in (source, rank) order
                take = np.minimum(total[now], bound) - done
                ends = np.cumsum(take)
                runs = ends - take
                sel = np.repeat(starts[now] + done - runs, take) + np.arange(int(ends[-1]))
                s, r = src[sel], rank[sel]
                self.checked[owner[now]] += take
                d = cpdist(self.rest_obj[s], self.target_obj[r],
                           scorer=Levenshtein.distance, dtype=np.int32,
                           workers=((self.workers if workers is None else workers)
                                    if s.size >= _PARALLEL_PAIRS else 1))
                best = np.minimum.reduceat(d.astype(np.int64) * size + r, runs)
                mine = owner[now]  # distinct
                self.memo[mine] = np.minimum(self.memo[mine], best)
                hit = np.flatnonzero(d <= k)
                if hit.size:
                    s, r = s[hit], r[hit]  # sorted by (source, rank): the first hit per source
                    first = _first_of_runs(s)
                    self._resolve(s[first], r[first])
            done = bound

    def _band_search(self, sources: np.ndarray, low: np.ndarray) -> None:
        """Exact distances from ``sources`` (none within low - 1 of any target) to every target
        of their length band, by ``rapidfuzz.process.cdist`` (SIMD over sources of one length):
        first the band |m - n| <= low, then one gap at a time for the sources whose best
        distance so far reaches it. Targets are passed in rank order, so the first minimum of a
        row is the tie-break winner."""
        index, lengths = self.index, self.index.lengths
        by_length = np.argsort(lengths, kind="stable")  # ranks by (length, rank)
        length_start = np.searchsorted(lengths[by_length], np.arange(index.max_length + 2))
        for n in _distinct(self.n[sources]):
            group = sources[self.n[sources] == n]
            first = max(2, int(low[self.n[sources] == n].min()))
            best_d = np.full(group.size, np.iinfo(np.int64).max, dtype=np.int64)
            best_r = np.full(group.size, index.size, dtype=np.int64)
            queries = self.rest_obj[group].tolist()
            gaps = [(0, first)] + [(g, g) for g in range(first + 1, max(n, index.max_length) + 1)]
            for lo, hi in gaps:
                rows = np.flatnonzero(best_d >= lo)
                if rows.size == 0:
                    break
                parts = [by_length[length_start[m]:length_start[m + 1]]
                         for m in range(max(n - hi, 0), min(n + hi, index.max_length) + 1)
                         if lo <= abs(m - n)]
                ranks = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
                if ranks.size == 0:
                    continue
                choices = self.target_obj[ranks].tolist()
                step = max(1, _BLOCK_ENTRIES // ranks.size)
                for r0 in range(0, rows.size, step):
                    part = rows[r0:r0 + step]
                    dist = cdist([queries[i] for i in part.tolist()], choices,
                                 scorer=Levenshtein.distance, dtype=np.int32,
                                 workers=self.workers)
                    at = dist.argmin(axis=1)
                    d = dist[np.arange(part.size), at].astype(np.int64)
                    r = ranks[at]
                    better = (d < best_d[part]) | ((d == best_d[part]) & (r < best_r[part]))
                    best_d[part[better]], best_r[part[better]] = d[better], r[better]
            self._resolve(group, best_r)

    def _bitset_search(self, sources: np.ndarray, k: int) -> None:
        """Levels k, k + 1, … for ``sources`` with the bitset counters, until all resolve.

        Chunks (sources of one length) run on a thread pool: numpy and rapidfuzz release the
        GIL, the chunks touch disjoint sources, and every bitset is built beforehand.
        """
        if sources.size == 0:
            return
        index = self.index
        spans = [np.arange(a, b) for a, b in
                 zip(self.feat_start[sources].tolist(), self.feat_start[sources + 1].tolist(),
                     strict=True)]
        index.absent_rows(self.feat[np.concatenate(spans)] if spans else np.zeros(0, np.int64))
        chunks: list[tuple[np.ndarray, int]] = []
        for length in _distinct(self.n[sources]):
            group = sources[self.n[sources] == length]
            present = self.feat_start[group + 1] - self.feat_start[group]
            group = group[np.argsort(present, kind="stable")]
            words = int(index.band_size(np.array([length]), k + 3)[0]) // 64 + 2 * len(_TIERS)
            planes = (int(present.max(initial=0)) + 1).bit_length()
            size = max(64, _BATCH_WORDS // max(words * planes, 1))
            chunks += [(group[c0:c0 + size], length) for c0 in range(0, group.size, size)]
        chunks.sort(key=lambda c: -c[0].size * index.band_size(np.array([c[1]]), k)[0])
        threads = min(self.threads, len(chunks))
        if threads <= 1:
            for rows, length in chunks:
                _BitsetChunk(self, rows, length, self.workers).run(k)
            return
        with ThreadPoolExecutor(threads) as pool:
            for done in [pool.submit(_BitsetChunk(self, rows, length, 1).run, k)
                         for rows, length in chunks]:
                done.result()


class _BitsetChunk:
    """Sources of one length searched together with bit-sliced counters (module docstring, 6).

    For each rank tier, ``planes[t][b, row, w]`` is bit b of the number of the row's features
    that the targets of word ``origin[t] + w`` lack; words are counted when a level's length
    band first reaches them (every word once: a target's count does not depend on the level).
    """

    def __init__(self, search: _LevelSearch, rows: np.ndarray, n: int, workers: int) -> None:
        self.search, self.index, self.n, self.workers = search, search.index, n, workers
        rows = rows[np.lexsort((search.first_level[rows], search.base[rows]))]
        self.rows = rows
        self.fresh = np.zeros(rows.size, dtype=bool)
        feat_start, feat = search.feat_start, search.feat
        have = feat_start[rows + 1] - feat_start[rows]
        slots = int(have.max(initial=0))
        slot = np.arange(slots)
        at = np.minimum(feat_start[rows][:, None] + slot[None, :], max(feat.size - 1, 0))
        fid = (np.where(slot[None, :] < have[:, None], feat[at], -1) if feat.size
               else np.full((rows.size, slots), -1, dtype=np.int64))
        self.absent_row = self.index.absent_rows(fid.reshape(-1)).reshape(rows.size, slots)
        self.bits = (slots + 1).bit_length()  # counts stay below 2**bits - 1
        self.base = search.base[rows]
        self.origin = [0] * len(_TIERS)
        self.counted = [(0, 0)] * len(_TIERS)  # counted target words [lo, hi) per tier
        self.planes = [np.zeros((self.bits, rows.size, 0), dtype=_U64) for _ in _TIERS]

    def run(self, k: int) -> None:
        index, n, search = self.index, self.n, self.search
        # rows whose first level this is take every target within the bound, the others only
        # those whose bound is exactly k (the rest were verified at earlier levels)
        self.fresh = search.first_level[self.rows] == k
        self._runs()
        while self.rows.size:
            for t in range(len(_TIERS)):
                if t:
                    search._resolve_memo(self.rows, k, int(index.tier_cut[t]))
                p0, p1 = index.band(t, n, k)
                p0, p1 = int(p0), int(p1)
                if p1 > p0:
                    self._ensure(t, p0 // 64, (p1 + 63) // 64, k)
                    self._extract(t, k)
                live = search.best_rank[self.rows] == _OPEN
                if not live.any():
                    return
                if live.sum() * 4 <= self.rows.size * 3:  # drop resolved rows
                    self.rows, self.base = self.rows[live], self.base[live]
                    self.fresh = self.fresh[live]
                    self.absent_row = self.absent_row[live]
                    self.planes = [np.ascontiguousarray(p[:, live]) for p in self.planes]
                    self._runs()
            search._resolve_memo(self.rows, k, index.size)
            if self.fresh.any():
                self.fresh[:] = False
                self._runs()
            k += 1

    def _runs(self) -> None:
        """Runs of rows with equal base (features of the row that no target has) and equal
        freshness (rows are sorted by base, then by first level: fresh rows last)."""
        key = self.base * 2 + self.fresh
        starts = np.flatnonzero(_first_of_runs(key))
        ends = np.append(starts[1:], key.size)
        self.base_runs = list(zip(starts.tolist(), ends.tolist(), self.base[starts].tolist(),
                                  self.fresh[starts].tolist(), strict=True))

    def _ensure(self, t: int, w0: int, w1: int, k: int) -> None:
        """Count tier t's target words [w0, w1) (those not counted yet)."""
        lo, hi = self.counted[t]
        if lo < hi and w0 >= lo and w1 <= hi:
            return
        origin, planes = self.origin[t], self.planes[t]
        if not (origin <= w0 and w1 <= origin + planes.shape[2]):
            # room for a few more levels, so that the storage is rarely copied
            q0, q1 = self.index.band(t, self.n, k + 3)
            g0, g1 = min(int(q0) // 64, w0), max((int(q1) + 63) // 64, w1)
            grown = np.zeros((self.bits, self.rows.size, g1 - g0), dtype=_U64)
            if lo < hi:
                grown[:, :, lo - g0:hi - g0] = planes[:, :, lo - origin:hi - origin]
            self.origin[t], self.planes[t] = origin, planes = g0, grown
        if lo >= hi:  # nothing counted yet
            self._count(planes, w0, w1, origin)
            self.counted[t] = (w0, w1)
            return
        if w0 < lo:
            self._count(planes, w0, lo, origin)
        if w1 > hi:
            self._count(planes, hi, w1, origin)
        self.counted[t] = (min(w0, lo), max(w1, hi))

    def _count(self, planes: np.ndarray, w0: int, w1: int, origin: int) -> None:
        """Add each feature slot's missing-bits of target words [w0, w1) into the counters, a
        block of rows at a time so that the block stays in cache."""
        absent = self.index.absent
        rows = planes.shape[1]
        step = max(8, _BLOCK_WORDS // max(w1 - w0, 1))
        spare = np.empty((min(step, rows), w1 - w0), dtype=_U64)
        for r0 in range(0, rows, step):
            view = planes[:, r0:r0 + step, w0 - origin:w1 - origin]
            for j in range(self.absent_row.shape[1]):
                # (fancy indexing with a slice: np.take on a sliced view is far slower)
                c, s = absent[self.absent_row[r0:r0 + step, j], w0:w1], spare[:view.shape[1]]
                # ripple-carry add of one bit per target; after slot j a count is at most j + 1
                for b in range((j + 1).bit_length()):
                    np.bitwise_and(view[b], c, out=s)
                    np.bitwise_xor(view[b], c, out=view[b])
                    c, s = s, c

    def _below(self, t: int, p0: int, p1: int, allowed: int, out: np.ndarray,
               w_out: int) -> None:
        """OR into ``out`` (words from w_out) the bits of positions [p0, p1) of tier t whose
        row has at most ``allowed - base`` missing features, exactly that many for rows that
        are not fresh (rows are sorted by base)."""
        w0, w1 = p0 // 64, (p1 + 63) // 64
        planes = self.planes[t][:, :, w0 - self.origin[t]:w1 - self.origin[t]]
        top = (1 << self.bits) - 1  # counts stay below top
        for r0, r1, base, fresh in self.base_runs:
            view = planes[:, r0:r1]
            if fresh:
                bound = min(max(allowed - base + 1, 0), top)  # count < bound
                if bound == 0:
                    continue
                mask = np.zeros(view.shape[1:], dtype=_U64)
                equal: np.ndarray | None = None  # None: all ones
                for b in range(self.bits - 1, -1, -1):
                    x = view[b]
                    if (bound >> b) & 1:
                        mask |= ~x if equal is None else equal & ~x
                        equal = x.copy() if equal is None else equal & x
                    else:
                        equal = ~x if equal is None else equal & ~x
            else:
                value = allowed - base  # count == value
                if not 0 <= value < top:
                    continue
                mask = np.empty(view.shape[1:], dtype=_U64)
                for b in range(self.bits):
                    x = view[b]
                    if b == 0:
                        np.copyto(mask, x) if value & 1 else np.invert(x, out=mask)
                    elif (value >> b) & 1:
                        mask &= x
                    else:
                        mask &= ~x
            mask[:, 0] &= _ALL << _U64(p0 & 63)  # positions before p0 in the first word
            if p1 & 63:
                mask[:, -1] &= ~(_ALL << _U64(p1 & 63))  # positions from p1 in the last word
            out[r0:r1, w0 - w_out:w1 - w_out] |= mask

    def _extract(self, t: int, k: int) -> None:
        """Candidates of tier t at level k, verified."""
        index, n = self.index, self.n
        top = index.max_length + 1
        p0, p1 = index.band(t, n, k)
        w0, w1 = int(p0) // 64, (int(p1) + 63) // 64
        result = np.zeros((self.rows.size, w1 - w0), dtype=_U64)
        # lengths m <= n: k missing features allowed; m = n + d: k - d
        ranges = [(int(index.start[t, min(max(n - k, 0), top)]),
                   int(index.start[t, min(n + 1, top)]), k)]
        ranges += [(int(index.start[t, min(n + d, top)]), int(index.start[t, min(n + d + 1, top)]),
                    k - d) for d in range(1, k + 1)]
        for q0, q1, allowed in ranges:
            if q1 > q0:
                self._below(t, q0, q1, allowed, result, w0)
        closed = self.search.best_rank[self.rows] != _OPEN
        if closed.any():  # rows resolved since the last drop
            result[closed] = 0
        flat = np.flatnonzero(result)
        if flat.size == 0:
            return
        row, word = np.divmod(flat, result.shape[1])
        # one flat bit array: nonzero on a 1-D array is far faster than on a 2-D one
        hit, bit = np.divmod(np.flatnonzero(np.unpackbits(
            result.reshape(-1)[flat].view(np.uint8), bitorder="little")), 64)
        position = (w0 + word[hit]) * 64 + bit
        self.search._verify(self.rows[row[hit]], index.rank_at[position], k, self.workers)


def _chunks(count: np.ndarray, limit: int) -> Iterator[slice]:
    """Consecutive slices of ``count`` whose sums stay near ``limit`` (at least one item)."""
    ends = np.cumsum(count)
    start, done = 0, 0
    while start < count.size:
        stop = max(int(np.searchsorted(ends, done + limit, "right")), start + 1)
        yield slice(start, stop)
        done = int(ends[stop - 1])
        start = stop


def _distinct(values: np.ndarray) -> list[int]:
    """Distinct values of a non-negative int array, ascending (np.unique is slow here)."""
    if values.size == 0:
        return []
    return np.flatnonzero(np.bincount(values)).tolist()


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="vocab map (MinED)", unit="tok")


# --------------------------------------------------------------------------- public API


def build_vocab_map(source: Sequence[str], target: Sequence[str], *, workers: int = -1,
                    progress: bool = False) -> np.ndarray:
    """MinED map: int32 ``[len(source)]`` of target ids (see the module docstring for the rule).

    ``workers`` is passed to rapidfuzz (-1: all cores).
    """
    if len(target) == 0:
        raise ValueError("cannot map onto an empty target vocabulary")
    with ThreadPoolExecutor(1) as side:
        # the work on the targets alone runs on a second thread from the start, next to the
        # work on the sources (numpy releases the GIL in its large array operations)
        strings, smallest = _distinct_targets(target)
        flat = side.submit(_flat, strings)
        bits = _key_bits(len(source), len(strings))
        tables = side.submit(lambda: _one_tables(flat.result(), bits))
        longest = max(map(len, source), default=0)
        two_keys = side.submit(lambda: _two_keys(flat.result(), _TWO_MIN_LENGTH - 2, longest + 2,
                                                 bits))
        index = side.submit(lambda: _Index(flat.result()))
        targets = _prepare_targets(target, strings, smallest, flat)
        rank_of = targets.rank_of
        collapsed = _collapse_foreign({s for s in source if s not in rank_of}, targets)
        keys = sorted(set(collapsed.values()))
        best = _distance_one(keys, targets, workers, tables.result(), bits)
        rest = [k for k in keys if k not in best]
        two, beyond = _distance_two(rest, targets, workers, two_keys.result())
        best.update(two)
        if two:
            beyond = beyond[[k not in two for k in rest]]
            rest = [k for k in rest if k not in two]
        if rest:
            bar = _progress_bar(len(rest), progress)
            best.update(_LevelSearch(rest, targets, workers, index.result(), beyond).run(bar))
            if bar is not None:
                bar.close()
    final = dict(rank_of)
    final.update(zip(collapsed, map(best.__getitem__, collapsed.values()), strict=True))
    ranks = np.fromiter(map(final.__getitem__, source), dtype=np.int64, count=len(source))
    return targets.ids[ranks].astype(np.int32)


def brute_force_vocab_map(source: Sequence[str], target: Sequence[str],
                          indices: Sequence[int] | None = None) -> np.ndarray:
    """The slow oracle: one ``editdistance.eval`` per pair, the tie rule written plainly.

    Returns the map for ``source[i]`` for each i in ``indices`` (default: all), int32.
    """
    import editdistance

    rows = range(len(source)) if indices is None else indices
    out = np.empty(len(rows), dtype=np.int32)
    for k, i in enumerate(rows):
        s = source[i]
        best: tuple[int, str, int] | None = None
        for j, t in enumerate(target):
            key = (0 if s == t else int(editdistance.eval(s, t)), t, j)
            if best is None or key < best:
                best = key
        if best is None:
            raise ValueError("cannot map onto an empty target vocabulary")
        out[k] = best[2]
    return out


@dataclass(frozen=True)
class VocabMapResult:
    """A vocabulary map between two tokenizers and where it came from.

    source_to_target: int32 ``[source vocab size]``, target id per source id.
    exact_matches: how many source ids have a target with the same canonical string.
    """

    source_fingerprint: str
    target_fingerprint: str
    mode: CanonicalMode
    source_to_target: np.ndarray
    exact_matches: int
    from_cache: bool
    build_seconds: float


def vocab_map_for(source_tok: Any, target_tok: Any, mode: CanonicalMode | str =
                  CanonicalMode.SURFACE, cache: Any | None = None) -> VocabMapResult:
    """The vocabulary map from ``source_tok`` to ``target_tok`` in ``mode``.

    ``cache`` is a :class:`fedmkt.align.cache.VocabMapCache` (or None): a valid cached map is
    returned as is; a fresh one is stored there.
    """
    mode = CanonicalMode(mode)
    start = time.perf_counter()
    src_fp, tgt_fp = tokenizer_fingerprint(source_tok), tokenizer_fingerprint(target_tok)
    source = canonical_vocab(source_tok, mode, target_tok)
    target = canonical_vocab(target_tok, mode)
    target_strings = set(target)
    exact = sum(1 for s in source if s in target_strings)
    if cache is not None:
        cached = cache.get(src_fp, tgt_fp, mode, source_size=len(source),
                           target_size=len(target))
        if cached is not None:
            return VocabMapResult(src_fp, tgt_fp, mode, cached, exact, True,
                                  time.perf_counter() - start)
    mapping = build_vocab_map(source, target, workers=_default_workers())
    seconds = time.perf_counter() - start
    if cache is not None:
        cache.put(src_fp, tgt_fp, mode, mapping, {
            "source_size": len(source), "target_size": len(target),
            "exact_matches": exact, "build_seconds": round(seconds, 3),
        })
    return VocabMapResult(src_fp, tgt_fp, mode, mapping, exact, False, seconds)


def _default_workers() -> int:
    env = os.environ.get("FEDMKT_VOCAB_MAP_WORKERS")
    return int(env) if env else -1
