"""Sequence alignment of two tokenizations of the same text (DESIGN §4).

A *path* is a list of ``(source_index, target_index)`` pairs: monotone (both indices never
decrease), starting at ``(0, 0)`` and ending at ``(n - 1, m - 1)``, each step moving the source,
the target or both by one token. Every token of both sequences appears at least once.

Three ways to compute it:

* :func:`dtw_align` — dynamic time warping with the Levenshtein distance between token strings as
  the cost, exactly as the FedMKT reference (FATE-LLM, taken from FuseLLM) does it, fast.
* :func:`dtw_align_reference` — the same thing written as the reference writes it (one Python
  ``editdistance`` call per cell, float matrix, Python traceback): the oracle and the baseline.
* :func:`offsets_align` — exact and linear-time when both tokenizations come with character
  offsets into the same text.
"""

from __future__ import annotations

from collections.abc import Sequence

import editdistance
import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

Path = list[tuple[int, int]]

# Stand-in for infinity in integer accumulation; far above any reachable cost (a path has at most
# n + m cells, each costing at most the longer token's length) and safe from int64 overflow.
_INF = np.int64(1) << np.int64(60)


def dtw_align(source: Sequence[str], target: Sequence[str]) -> Path:
    """The DTW path between two token-string sequences, identical to :func:`dtw_align_reference`.

    Recurrence: ``D[i, j] = cost(i, j) + min(D[i-1, j], D[i, j-1], D[i-1, j-1])`` with
    ``D[-1, -1] = 0`` and every other border cell infinite; ``cost`` is the Levenshtein distance.
    Traceback from ``(n-1, m-1)`` prefers, on equal accumulated cost, the diagonal, then the
    source step (up), then the target step (left) — the reference's ``argmin`` order.

    Returns ``[]`` when either sequence is empty.
    """
    n, m = len(source), len(target)
    if n == 0 or m == 0:
        return []
    return _traceback(_accumulate(list(source), list(target)))


# Rows of the cost matrix computed at a time: bounds the working memory to the accumulated
# matrix itself (8 bytes per cell) plus about 1M cells, whatever the sequence lengths.
_BLOCK_CELLS = 1 << 20


def _accumulate(source: list[str], target: list[str]) -> np.ndarray:
    """Accumulated DTW cost ``D`` with an extra first column of "infinity", one pass per row.

    Within a row ``D[i, j] = min(A[j], C[i, j] + D[i, j-1])`` where
    ``A[j] = C[i, j] + min(D[i-1, j-1], D[i-1, j])``. Unrolling the left-to-right chain gives
    ``D[i, j] = S[j] + min_{k <= j}(A[k] - S[k])`` with ``S`` the running sum of the row's costs,
    i.e. a cumulative minimum — exact in integer arithmetic. Returns shape ``(n, m + 1)``;
    column 0 is the infinite border, so ``D[i, j]`` lives at ``[i, j + 1]``.
    """
    n, m = len(source), len(target)
    acc = np.empty((n, m + 1), dtype=np.int64)
    acc[:, 0] = _INF
    # Row views made once: slicing inside the loop would cost more than the arithmetic.
    cells, shifted = list(acc[:, 1:]), list(acc[:, :-1])
    buf = np.empty(m, dtype=np.int64)
    minimum, add, cummin = np.minimum, np.add, np.minimum.accumulate
    block = max(1, _BLOCK_CELLS // m)
    for low in range(0, n, block):
        cost = process.cdist(source[low:low + block], target, scorer=Levenshtein.distance,
                             dtype=np.int32, workers=1).astype(np.int64)
        running = np.cumsum(cost, axis=1)
        own_minus_running = list(cost - running)
        running_rows = list(running)
        for k in range(len(running_rows)):
            i = low + k
            if i == 0:  # only the virtual (-1, -1) corner and the left neighbour feed a cell
                cells[0][:] = running_rows[0]
                continue
            minimum(cells[i - 1], shifted[i - 1], out=buf)  # best of up and diagonal
            add(buf, own_minus_running[k], out=buf)
            cummin(buf, out=buf)
            add(buf, running_rows[k], out=cells[i])
    return acc


def _traceback(acc: np.ndarray) -> Path:
    """Walk back from the last cell; ties go diagonal, then up (source), then left (target).

    ``acc`` is :func:`_accumulate`'s padded matrix; a flat memoryview gives plain ``int`` reads.
    """
    n, width = acc.shape
    flat = memoryview(np.ascontiguousarray(acc).reshape(-1))
    i, j = n - 1, width - 2
    path: Path = []
    while i > 0 and j > 0:
        path.append((i, j))
        k = (i - 1) * width + j  # D[i-1, j-1]; D[i-1, j] is next to it, D[i, j-1] a row below
        diag, up, left = flat[k], flat[k + 1], flat[k + width]
        if diag <= up and diag <= left:
            i -= 1
            j -= 1
        elif up <= left:
            i -= 1
        else:
            j -= 1
    # On the first row or column only one move remains.
    while i > 0:
        path.append((i, 0))
        i -= 1
    while j > 0:
        path.append((0, j))
        j -= 1
    path.append((0, 0))
    path.reverse()
    return path


def dtw_align_reference(source: Sequence[str], target: Sequence[str]) -> Path:
    """DTW written the way the reference writes it: the oracle for tests and the speed baseline.

    One ``editdistance.eval`` call per cell into a float matrix bordered by infinity, then a
    Python traceback choosing ``argmin([diagonal, up, left])`` (first minimum wins).
    Returns ``[]`` when either sequence is empty (the reference fails there).
    """
    n, m = len(source), len(target)
    if n == 0 or m == 0:
        return []
    matrix = np.zeros((n + 1, m + 1))
    matrix[0, :] = np.inf
    matrix[:, 0] = np.inf
    matrix[0, 0] = 0
    for i, a in enumerate(source):
        for j, b in enumerate(target):
            step = editdistance.eval(a, b)
            matrix[i + 1, j + 1] = step + min(matrix[i, j + 1], matrix[i + 1, j], matrix[i, j])
    matrix = matrix[1:, 1:]
    i, j = n - 1, m - 1
    path: Path = []
    while i > 0 or j > 0:
        path.append((i, j))
        diag = matrix[i - 1, j - 1] if i > 0 and j > 0 else np.inf
        up = matrix[i - 1, j] if i > 0 else np.inf
        left = matrix[i, j - 1] if j > 0 else np.inf
        move = int(np.argmin([diag, up, left]))
        if move == 0:
            i -= 1
            j -= 1
        elif move == 1:
            i -= 1
        else:
            j -= 1
    path.append((0, 0))
    path.reverse()
    return path


def offsets_align(
    source_offsets: Sequence[tuple[int, int]], target_offsets: Sequence[tuple[int, int]]
) -> Path:
    """Align two tokenizations of the same text by their character spans ``(start, end)``.

    A sweep over both token lists that always advances the token whose span ends first (both when
    they end together), so that on two tokenizations covering the same characters the path pairs
    exactly the tokens whose spans overlap. The result is a valid warping path: monotone, from
    ``(0, 0)`` to ``(n-1, m-1)``, every token of both sides present at least once.

    Tokens that cover no new characters — zero-width spans ``(x, x)`` (special tokens, a lone
    SentencePiece ``▁``) and byte-fallback pieces sharing one character's span — stay with the
    token the sweep is on: a run of them is paired with the other side's token that contains
    position ``x`` or, at a boundary, the one that ends at ``x``; a zero-width token at the very
    start pairs with the other side's first token. Such tokens therefore never align one-to-one
    with a token that also has a real partner.

    Returns ``[]`` when either side is empty. Raises ``ValueError`` on a span with end < start.
    """
    src = _checked_spans(source_offsets, "source")
    tgt = _checked_spans(target_offsets, "target")
    n, m = len(src), len(tgt)
    if n == 0 or m == 0:
        return []
    i = j = 0
    path: Path = [(0, 0)]
    while i < n - 1 or j < m - 1:
        if i == n - 1:
            j += 1
        elif j == m - 1:
            i += 1
        else:
            end_s, end_t = src[i][1], tgt[j][1]
            if end_s < end_t or (end_s == end_t and src[i + 1][1] <= end_s):
                i += 1
            elif end_t < end_s or tgt[j + 1][1] <= end_t:
                j += 1
            else:
                i += 1
                j += 1
        path.append((i, j))
    return path


def _checked_spans(offsets: Sequence[tuple[int, int]], side: str) -> list[tuple[int, int]]:
    spans = [(int(start), int(end)) for start, end in offsets]
    for index, (start, end) in enumerate(spans):
        if end < start or start < 0:
            raise ValueError(f"{side} token {index} has an invalid span ({start}, {end})")
    return spans
