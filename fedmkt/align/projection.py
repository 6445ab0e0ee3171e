"""Top-k projection: a teacher's per-position top-k logits re-expressed for a student (DESIGN §4).

Positions: the teacher's row at position ``p`` predicts teacher token ``p + 1``; the student's row
at position ``q`` predicts student token ``q + 1``. Student position ``q`` takes the teacher's row
``p`` when

* student token ``b = q + 1`` and teacher token ``a = p + 1`` are aligned *one-to-one* by the path
  (``a`` is paired only with ``b`` and ``b`` only with ``a``), so both rows predict the same text;
* ``p`` is one of the rows the teacher sent, ``[position_start, position_start + P)``;
* the two tokens agree: equal canonical strings, or ``vocab_map_t2s[teacher_ids[a]] ==
  student_ids[b]``;
* at least one of the teacher's top-k ids maps to a student id.

Such a row keeps, in the teacher's order (by logit, descending), the first occurrence of each
student id obtained through ``vocab_map_t2s`` together with its logit; ids ``< 0`` are padding
(in the teacher's row or in the map) and are skipped; the row is cut or padded to ``k_out`` with
id ``-1`` / logit ``0``. Every other position falls back to a one-hot on the student's true next
token: ``[student_ids[q + 1], -1, ...]`` with logits ``0``.

:func:`project_topk` is vectorised with numpy; :func:`project_topk_reference` is the same rule as a
plain per-position loop (the tests' oracle and the benchmark's baseline).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PAD_ID = -1


@dataclass(frozen=True)
class Projection:
    """The student-side top-k for one sample.

    ``topk_ids`` int32 ``[Ls - 1, k_out]`` (``-1`` pads) and ``topk_logits`` float32 of the same
    shape hold one row per student position ``0 .. Ls - 2``. ``aligned_mask`` (bool ``[Ls - 1]``)
    tells which rows carry the teacher's distribution; ``aligned`` and ``fallback`` count them and
    the one-hot rows; ``positions = aligned + fallback = Ls - 1``.
    """

    topk_ids: np.ndarray
    topk_logits: np.ndarray
    aligned_mask: np.ndarray
    aligned: int
    fallback: int
    positions: int
    position_start: int = 0  # the student position of row 0 (see ``within``)

    def within(self, rows: tuple[int, int]) -> Projection:
        """Only the student rows ``[start, stop)`` (relative to this projection), with their
        counts: a teacher that sent only some rows (the answer's, say) reaches only the student
        rows aligned to them, and the rows outside are neither projected nor fallbacks."""
        start, stop = rows
        if (start, stop) == (0, len(self.topk_ids)):
            return self
        mask = self.aligned_mask[start:stop]
        aligned = int(mask.sum())
        return Projection(self.topk_ids[start:stop], self.topk_logits[start:stop], mask,
                          aligned, (stop - start) - aligned, stop - start,
                          self.position_start + start)


def reached_rows(path: Sequence[tuple[int, int]] | np.ndarray, position_start: int,
                 sent_rows: int, student_length: int) -> tuple[int, int]:
    """The student rows ``[start, stop)`` that a teacher's rows ``[position_start,
    position_start + sent_rows)`` can reach: from the first to the last student position whose
    next token the path pairs with the next token of a sent row. All rows when the teacher sent
    rows from its first position on (nothing was left out before them) and up to its last, or
    when no row is reached (the sample is then all fallbacks, as before)."""
    rows = max(student_length - 1, 0)
    pairs = np.asarray(path, dtype=np.int64).reshape(-1, 2)
    teacher_row = pairs[:, 0] - 1 - position_start
    sent = (teacher_row >= 0) & (teacher_row < sent_rows) & (pairs[:, 1] >= 1)
    if position_start == 0 or not sent.any():
        return 0, rows
    student_rows = pairs[sent, 1] - 1
    return int(student_rows.min()), min(rows, int(student_rows.max()) + 1)


@dataclass(frozen=True)
class _Inputs:
    """Validated, array-typed inputs shared by both implementations."""

    teacher_ids: np.ndarray  # integer [Lt]
    student_ids: np.ndarray  # integer [Ls]
    topk_ids: np.ndarray  # integer [P, k]
    topk_logits: np.ndarray  # float32 [P, k]
    position_start: int
    path: np.ndarray  # int64 [N, 2]: (teacher index, student index)
    vocab_map: np.ndarray  # integer [teacher vocab]: student id, or -1 for none
    teacher_strings: Sequence[str]
    student_strings: Sequence[str]
    k_out: int


def project_topk(
    teacher_ids: Sequence[int] | np.ndarray,
    student_ids: Sequence[int] | np.ndarray,
    teacher_topk_ids: np.ndarray,
    teacher_topk_logits: np.ndarray,
    teacher_position_start: int,
    path: Sequence[tuple[int, int]] | np.ndarray,
    vocab_map_t2s: np.ndarray,
    teacher_strings: Sequence[str],
    student_strings: Sequence[str],
    k_out: int,
) -> Projection:
    """Project the teacher's top-k rows onto the student's positions (vectorised; see module doc).

    ``path`` pairs ``(teacher token index, student token index)``; ``teacher_strings`` and
    ``student_strings`` are the canonical strings of the tokens of each sequence (one per token).
    Raises ``ValueError`` on inconsistent or out-of-range inputs.
    """
    x = _validate(
        teacher_ids, student_ids, teacher_topk_ids, teacher_topk_logits, teacher_position_start,
        path, vocab_map_t2s, teacher_strings, student_strings, k_out,
    )
    rows = max(len(x.student_ids) - 1, 0)
    out_ids = np.full((rows, x.k_out), PAD_ID, dtype=np.int32)
    out_logits = np.zeros((rows, x.k_out), dtype=np.float32)
    mask = np.zeros(rows, dtype=bool)
    if rows == 0:
        return Projection(out_ids, out_logits, mask, 0, 0, 0)
    out_ids[:, 0] = x.student_ids[1:]

    q, sent_row = _candidate_rows(x)
    if q.size:
        mapped, keep, slot = _dedup_mapped(x.topk_ids[sent_row], x.vocab_map, x.k_out)
        has_any = keep.any(axis=1)
        q, mapped, keep, slot = q[has_any], mapped[has_any], keep[has_any], slot[has_any]
        logits = x.topk_logits[sent_row[has_any]]
        out_ids[q] = PAD_ID
        within, col = np.nonzero(keep)
        out_ids[q[within], slot[within, col]] = mapped[within, col]
        out_logits[q[within], slot[within, col]] = logits[within, col]
        mask[q] = True
    aligned = int(mask.sum())
    return Projection(out_ids, out_logits, mask, aligned, rows - aligned, rows)


def _candidate_rows(x: _Inputs) -> tuple[np.ndarray, np.ndarray]:
    """Student positions ``q`` whose next token is matched, and the teacher row each one takes."""
    lt, ls = len(x.teacher_ids), len(x.student_ids)
    t_idx, s_idx = x.path[:, 0], x.path[:, 1]
    one_to_one = (np.bincount(t_idx, minlength=lt)[t_idx] == 1) & (
        np.bincount(s_idx, minlength=ls)[s_idx] == 1
    )
    partner = np.full(ls, -1, dtype=np.int64)  # teacher token aligned one-to-one with student b
    partner[s_idx[one_to_one]] = t_idx[one_to_one]
    a = partner[1:]  # student position q predicts student token b = q + 1
    sent_row = a - 1 - x.position_start
    q = np.nonzero((a >= 1) & (sent_row >= 0) & (sent_row < len(x.topk_ids)))[0]
    a, b, sent_row = a[q], q + 1, sent_row[q]
    agree = x.vocab_map[x.teacher_ids[a]] == x.student_ids[b]
    if not agree.all():
        t_str = np.asarray(x.teacher_strings, dtype=object)
        s_str = np.asarray(x.student_strings, dtype=object)
        agree |= t_str[a] == s_str[b]
    return q[agree], sent_row[agree]


def _dedup_mapped(
    topk_ids: np.ndarray, vocab_map: np.ndarray, k_out: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map rows of teacher ids to student ids and mark what survives.

    Returns ``mapped`` (student ids, ``-1`` where padding or unmapped), ``keep`` (first occurrence
    of each valid id within its row, and among the first ``k_out`` such) and ``slot`` (the output
    column of each kept entry).
    """
    mapped = np.where(topk_ids >= 0, vocab_map[np.maximum(topk_ids, 0)], PAD_ID)
    order = np.argsort(mapped, axis=1, kind="stable")  # equal ids keep their original order
    ordered = np.take_along_axis(mapped, order, axis=1)
    first = np.ones(ordered.shape, dtype=bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    keep = np.empty_like(first)
    np.put_along_axis(keep, order, first & (ordered >= 0), axis=1)
    slot = np.cumsum(keep, axis=1) - 1
    keep &= slot < k_out
    return mapped, keep, slot


def project_topk_reference(
    teacher_ids: Sequence[int] | np.ndarray,
    student_ids: Sequence[int] | np.ndarray,
    teacher_topk_ids: np.ndarray,
    teacher_topk_logits: np.ndarray,
    teacher_position_start: int,
    path: Sequence[tuple[int, int]] | np.ndarray,
    vocab_map_t2s: np.ndarray,
    teacher_strings: Sequence[str],
    student_strings: Sequence[str],
    k_out: int,
) -> Projection:
    """The same projection as :func:`project_topk`, one position and one slot at a time."""
    x = _validate(
        teacher_ids, student_ids, teacher_topk_ids, teacher_topk_logits, teacher_position_start,
        path, vocab_map_t2s, teacher_strings, student_strings, k_out,
    )
    t_ids, s_ids = x.teacher_ids.tolist(), x.student_ids.tolist()
    vocab_map, top_ids, top_logits = x.vocab_map.tolist(), x.topk_ids.tolist(), x.topk_logits
    partners_of_t: dict[int, list[int]] = {}
    partners_of_s: dict[int, list[int]] = {}
    for a, b in x.path.tolist():
        partners_of_t.setdefault(a, []).append(b)
        partners_of_s.setdefault(b, []).append(a)

    rows = max(len(s_ids) - 1, 0)
    out_ids = np.full((rows, x.k_out), PAD_ID, dtype=np.int32)
    out_logits = np.zeros((rows, x.k_out), dtype=np.float32)
    mask = np.zeros(rows, dtype=bool)
    for q in range(rows):
        b = q + 1
        ids: list[int] = []
        logits: list[float] = []
        teachers = partners_of_s.get(b, [])
        if len(teachers) == 1 and len(partners_of_t[teachers[0]]) == 1:
            a = teachers[0]
            row = a - 1 - x.position_start
            agree = x.teacher_strings[a] == x.student_strings[b] or vocab_map[t_ids[a]] == s_ids[b]
            if a >= 1 and 0 <= row < len(top_ids) and agree:
                for slot, teacher_id in enumerate(top_ids[row]):
                    if teacher_id < 0 or vocab_map[teacher_id] < 0:
                        continue
                    if vocab_map[teacher_id] not in ids and len(ids) < x.k_out:
                        ids.append(vocab_map[teacher_id])
                        logits.append(float(top_logits[row, slot]))
        if ids:
            out_ids[q, : len(ids)] = ids
            out_logits[q, : len(ids)] = logits
            mask[q] = True
        else:
            out_ids[q, 0] = s_ids[b]
    aligned = int(mask.sum())
    return Projection(out_ids, out_logits, mask, aligned, rows - aligned, rows)


def _validate(
    teacher_ids: Sequence[int] | np.ndarray,
    student_ids: Sequence[int] | np.ndarray,
    topk_ids: np.ndarray,
    topk_logits: np.ndarray,
    position_start: int,
    path: Sequence[tuple[int, int]] | np.ndarray,
    vocab_map: np.ndarray,
    teacher_strings: Sequence[str],
    student_strings: Sequence[str],
    k_out: int,
) -> _Inputs:
    """Check shapes, ranges and types; raise ``ValueError`` with a message a person can act on."""
    t_ids = _int_array(teacher_ids, 1, "teacher_ids")
    s_ids = _int_array(student_ids, 1, "student_ids")
    vmap = _int_array(vocab_map, 1, "vocab_map_t2s")
    ids = _int_array(topk_ids, 2, "teacher_topk_ids")
    logits = np.asarray(topk_logits)
    if logits.shape != ids.shape or not np.issubdtype(logits.dtype, np.floating):
        raise ValueError(
            f"teacher_topk_logits must be a float array shaped like teacher_topk_ids {ids.shape}, "
            f"got {logits.dtype} {logits.shape}"
        )
    if isinstance(k_out, bool) or not isinstance(k_out, int | np.integer) or k_out < 1:
        raise ValueError(f"k_out must be a positive integer, got {k_out!r}")
    if not isinstance(position_start, int | np.integer) or position_start < 0:
        raise ValueError(f"teacher_position_start must be >= 0, got {position_start!r}")
    if position_start + len(ids) > len(t_ids):
        raise ValueError(
            f"teacher rows [{position_start}, {position_start + len(ids)}) exceed the teacher's "
            f"{len(t_ids)} positions"
        )
    if len(teacher_strings) != len(t_ids) or len(student_strings) != len(s_ids):
        raise ValueError(
            f"one canonical string per token is needed: teacher {len(teacher_strings)} strings "
            f"for {len(t_ids)} ids, student {len(student_strings)} strings for {len(s_ids)} ids"
        )
    _check_range(t_ids, 0, len(vmap), "teacher_ids", "the vocab map's teacher vocabulary")
    _check_range(ids, -np.inf, len(vmap), "teacher_topk_ids", "the teacher vocabulary")
    if np.any(s_ids < 0) or np.any(vmap < PAD_ID):
        raise ValueError("student ids must be >= 0 and vocab map entries >= -1")
    if not np.isfinite(logits[ids >= 0]).all():
        raise ValueError("teacher_topk_logits holds non-finite values at real (non-padding) ids")
    pairs = _checked_path(path, len(t_ids), len(s_ids))
    return _Inputs(
        t_ids, s_ids, ids, logits.astype(np.float32, copy=False), int(position_start), pairs,
        vmap, teacher_strings, student_strings, int(k_out),
    )


def _int_array(values: Sequence[int] | np.ndarray, ndim: int, name: str) -> np.ndarray:
    """``values`` as an integer array of ``ndim`` dimensions (an empty list counts as integer)."""
    array = np.asarray(values)
    if array.size == 0 and not np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.int64)
    if array.size == 0 and ndim == 2 and array.ndim == 1:
        array = array.reshape(0, 0)
    if array.ndim != ndim or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"{name} must be a {ndim}-D integer array, got {array.dtype} {array.shape}"
        )
    return array


def _check_range(values: np.ndarray, low: float, high: int, name: str, what: str) -> None:
    if values.size and (values.min() < low or values.max() >= high):
        raise ValueError(
            f"{name} out of range: values in [{values.min()}, {values.max()}] but {what} has "
            f"{high} ids"
        )


def _checked_path(path: Sequence[tuple[int, int]] | np.ndarray, lt: int, ls: int) -> np.ndarray:
    pairs = np.asarray(path, dtype=np.int64)
    if pairs.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(
            f"path must be a list of (teacher, student) pairs, got shape {pairs.shape}"
        )
    if pairs.min() < 0 or pairs[:, 0].max() >= lt or pairs[:, 1].max() >= ls:
        raise ValueError(f"path indices out of range for {lt} teacher and {ls} student tokens")
    return pairs
