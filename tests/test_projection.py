"""Top-k projection: the rule (DESIGN §4) on hand-made cases, and fast == reference."""

from __future__ import annotations

import random

import numpy as np
import pytest

from fedmkt.align.projection import Projection, project_topk, project_topk_reference
from fedmkt.align.sequence import dtw_align

# Teacher: "<s>" "The" " cat" " sat"  (ids 1, 10, 11, 12; teacher vocab of 20)
# Student: "The" " c" "at" " sat"      (ids 0, 1, 2, 3;  student vocab of 8)
TEACHER_IDS = [1, 10, 11, 12]
TEACHER_STR = ["<s>", "The", " cat", " sat"]
STUDENT_IDS = [0, 1, 2, 3]
STUDENT_STR = ["The", " c", "at", " sat"]
# "<s>" and "The" both pair with student "The"; " cat" pairs with " c" and "at".
PATH = [(0, 0), (1, 0), (2, 1), (2, 2), (3, 3)]


def vocab_map() -> np.ndarray:
    m = np.full(20, -1, dtype=np.int32)
    m[[10, 11, 12, 13, 14, 16, 17]] = [0, 1, 3, 5, 5, 7, 6]  # 13 and 14 both map to 5
    return m


def teacher_rows(position_start: int = 0, count: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Rows for teacher positions 0..3; row 2 (after " cat", predicting " sat") is the one used."""
    ids = np.array([
        [10, 11, 12, 13, 16],
        [11, 12, 10, 16, 17],
        [12, 14, 13, 15, 16],  # maps to 3, 5, 5(dup), unmapped, 7
        [16, 17, -1, -1, -1],
    ], dtype=np.int32)
    logits = np.array([[5, 4, 3, 2, 1]] * 4, dtype=np.float32) + np.arange(4)[:, None] * 10
    return ids[position_start:position_start + count], logits[position_start:position_start + count]


def project(fn=project_topk, **overrides) -> Projection:
    ids, logits = teacher_rows()
    args = dict(teacher_ids=TEACHER_IDS, student_ids=STUDENT_IDS, teacher_topk_ids=ids,
                teacher_topk_logits=logits, teacher_position_start=0, path=PATH,
                vocab_map_t2s=vocab_map(), teacher_strings=TEACHER_STR,
                student_strings=STUDENT_STR, k_out=4)
    args.update(overrides)
    return fn(**args)


@pytest.fixture(params=[project_topk, project_topk_reference], ids=["fast", "reference"])
def fn(request):
    return request.param


def test_one_to_one_position_takes_the_teacher_row_others_fall_back(fn):
    out = project(fn)
    assert out.topk_ids.dtype == np.int32 and out.topk_logits.dtype == np.float32
    assert out.topk_ids.shape == out.topk_logits.shape == (3, 4)
    # q = 2 predicts student token 3 (" sat"), aligned one-to-one with teacher token 3, whose
    # prediction is teacher row 2: ids 12, 14, 13, 15, 16 -> 3, 5, (5 again), (none), 7.
    assert out.topk_ids[2].tolist() == [3, 5, 7, -1]
    assert out.topk_logits[2].tolist() == [25.0, 24.0, 21.0, 0.0]
    # q = 0 and q = 1 predict " c" and "at", both inside the many-to-one " cat": one-hot.
    assert out.topk_ids[0].tolist() == [1, -1, -1, -1]
    assert out.topk_ids[1].tolist() == [2, -1, -1, -1]
    assert not out.topk_logits[:2].any()
    assert (out.aligned, out.fallback, out.positions) == (1, 2, 3)
    assert out.aligned_mask.tolist() == [False, False, True]


def test_dedup_keeps_the_first_highest_occurrence(fn):
    out = project(fn)
    # Teacher ids 14 (logit 24) and 13 (logit 23) both map to 5: the first one's logit stays.
    assert out.topk_ids[2].tolist().count(5) == 1
    assert out.topk_logits[2][out.topk_ids[2].tolist().index(5)] == 24.0


def test_k_out_cuts_and_pads(fn):
    assert project(fn, k_out=2).topk_ids[2].tolist() == [3, 5]
    wide = project(fn, k_out=7)
    assert wide.topk_ids[2].tolist() == [3, 5, 7, -1, -1, -1, -1]
    assert wide.topk_ids[0].tolist() == [1] + [-1] * 6


def test_identical_tokenizations_align_every_position(fn):
    path = [(i, i) for i in range(4)]
    out = project(fn, student_ids=[0, 1, 3, 6], student_strings=["The", " cat", " sat", "?"],
                  path=path, teacher_ids=[10, 11, 12, 17],
                  teacher_strings=["The", " cat", " sat", "?"])
    assert out.aligned == 3 and out.fallback == 0
    assert out.topk_ids[0].tolist() == [0, 1, 3, 5]  # teacher row 0 mapped
    assert out.topk_ids[1].tolist() == [1, 3, 0, 7]  # teacher row 1 mapped


def test_disagreeing_tokens_fall_back(fn):
    # Student token 3 is now " sit" (id 4): neither the strings nor the map agree.
    out = project(fn, student_ids=[0, 1, 2, 4], student_strings=["The", " c", "at", " sit"])
    assert out.aligned == 0
    assert out.topk_ids[2].tolist() == [4, -1, -1, -1]


def test_agreement_through_the_map_or_through_the_strings(fn):
    # Strings differ but the map sends teacher 12 to student 3: aligned.
    by_map = project(fn, student_strings=["The", " c", "at", " SAT"])
    assert by_map.aligned == 1
    # The map disagrees (teacher 12 -> 3, student id is 4) but the strings are equal: aligned.
    by_strings = project(fn, student_ids=[0, 1, 2, 4])
    assert by_strings.aligned == 1
    assert by_strings.topk_ids[2].tolist() == [3, 5, 7, -1]


def test_padding_ids_are_skipped_and_an_empty_row_falls_back(fn):
    ids, logits = teacher_rows()
    ids[2] = [-1, 12, -1, 15, -1]  # padding around one usable id and one unmapped id
    out = project(fn, teacher_topk_ids=ids)
    assert out.topk_ids[2].tolist() == [3, -1, -1, -1]
    assert out.topk_logits[2].tolist() == [24.0, 0.0, 0.0, 0.0]
    ids[2] = [15, -1, -1, -1, -1]  # nothing maps: one-hot on the true next token
    out = project(fn, teacher_topk_ids=ids)
    assert out.aligned == 0 and out.topk_ids[2].tolist() == [3, -1, -1, -1]


def test_rows_outside_the_sent_range_fall_back(fn):
    ids, logits = teacher_rows(position_start=3, count=1)
    out = project(fn, teacher_topk_ids=ids, teacher_topk_logits=logits, teacher_position_start=3)
    assert out.aligned == 0
    ids, logits = teacher_rows(position_start=2, count=1)
    out = project(fn, teacher_topk_ids=ids, teacher_topk_logits=logits, teacher_position_start=2)
    assert out.aligned == 1 and out.topk_ids[2].tolist() == [3, 5, 7, -1]
    empty = project(fn, teacher_topk_ids=np.zeros((0, 5), np.int32),
                    teacher_topk_logits=np.zeros((0, 5), np.float32))
    assert empty.aligned == 0 and empty.fallback == 3


def test_off_by_one_teacher_prediction_lands_on_the_same_next_token(fn):
    """Teacher "<s> A B C" vs student "A B C": student q predicts token q+1, teacher p token p+1.

    A perfect teacher (row p puts teacher token p + 1 on top) must put the student's own next
    token on top of every aligned student row.
    """
    teacher_ids, student_ids = [1, 10, 11, 12], [0, 1, 3]
    strings_t, strings_s = ["<s>", "A", "B", "C"], ["A", "B", "C"]
    path = [(0, 0), (1, 0), (2, 1), (3, 2)]
    vmap = vocab_map()
    top = np.array([[teacher_ids[p + 1] if p + 1 < 4 else 16, 17] for p in range(4)], np.int32)
    logits = np.array([[2.0, 1.0]] * 4, np.float32)
    out = fn(teacher_ids, student_ids, top, logits, 0, path, vmap, strings_t, strings_s, 2)
    assert out.aligned == 2
    for q in range(2):
        assert out.topk_ids[q, 0] == student_ids[q + 1]


def test_short_student_sequences_have_no_rows(fn):
    for student in ([], [0]):
        out = project(fn, student_ids=student, student_strings=["The"][: len(student)],
                      path=[(0, 0)] if student else [])
        assert out.topk_ids.shape == (0, 4) and out.positions == 0


def test_float16_logits_come_back_float32(fn):
    ids, logits = teacher_rows()
    out = project(fn, teacher_topk_logits=logits.astype(np.float16))
    assert out.topk_logits.dtype == np.float32 and out.topk_logits[2, 0] == 25.0


@pytest.mark.parametrize("overrides,message", [
    (dict(k_out=0), "k_out"),
    (dict(teacher_position_start=-1), "position_start"),
    (dict(teacher_position_start=1), "exceed"),
    (dict(teacher_ids=[1, 10, 11, 25]), "teacher_ids out of range"),
    (dict(teacher_topk_logits=np.zeros((4, 4), np.float32)), "shaped like"),
    (dict(teacher_topk_ids=np.full((4, 5), 99, np.int32)), "teacher_topk_ids out of range"),
    (dict(path=[(0, 0), (4, 3)]), "path indices"),
    (dict(path=[(0, 0, 0)]), "pairs"),
    (dict(student_strings=["The"]), "canonical string"),
    (dict(student_ids=[0, -1, 2, 3]), "student ids"),
    (dict(teacher_topk_ids=np.ones((4, 5), np.float32)), "integer"),
])
def test_invalid_inputs_are_rejected(fn, overrides, message):
    with pytest.raises(ValueError, match=message):
        project(fn, **overrides)


def test_non_finite_logits_at_real_ids_are_rejected(fn):
    ids, logits = teacher_rows()
    logits[3, 4] = -np.inf  # a padding slot of row 3: allowed
    project(fn, teacher_topk_logits=logits)
    logits[2, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        project(fn, teacher_topk_logits=logits)


# --------------------------------------------------------------------------- fast == reference


def random_case(rng: random.Random) -> dict:
    alphabet = "ab c"
    lt, ls = rng.randint(1, 30), rng.randint(0, 30)
    t_vocab, s_vocab = rng.randint(5, 40), rng.randint(5, 40)
    t_ids = [rng.randrange(t_vocab) for _ in range(lt)]
    s_ids = [rng.randrange(s_vocab) for _ in range(ls)]
    t_names = ["".join(rng.choices(alphabet, k=rng.randint(0, 2))) for _ in range(t_vocab)]
    s_names = ["".join(rng.choices(alphabet, k=rng.randint(0, 2))) for _ in range(s_vocab)]
    t_str = [t_names[i] for i in t_ids]
    s_str = [s_names[i] for i in s_ids]
    path = dtw_align(t_str, s_str) if rng.random() < 0.9 else [(0, 0)] * min(ls, 1)
    vmap = np.array([rng.randrange(-1, s_vocab) for _ in range(t_vocab)], dtype=np.int32)
    k = rng.randint(1, 8)
    start = rng.randint(0, lt - 1)
    count = rng.randint(0, lt - start)
    top = np.array([[rng.randrange(-1, t_vocab) for _ in range(k)] for _ in range(count)],
                   dtype=np.int32).reshape(count, k)
    logits = np.sort(np.array([[rng.uniform(-5, 5) for _ in range(k)] for _ in range(count)],
                              dtype=np.float32).reshape(count, k), axis=1)[:, ::-1]
    return dict(teacher_ids=t_ids, student_ids=s_ids, teacher_topk_ids=top,
                teacher_topk_logits=np.ascontiguousarray(logits), teacher_position_start=start,
                path=path, vocab_map_t2s=vmap, teacher_strings=t_str, student_strings=s_str,
                k_out=rng.randint(1, k + 3))


@pytest.mark.parametrize("seed", range(4))
def test_fast_equals_reference_on_random_inputs(seed: int):
    rng = random.Random(seed)
    aligned_seen = 0
    for _ in range(150):
        case = random_case(rng)
        fast, ref = project_topk(**case), project_topk_reference(**case)
        np.testing.assert_array_equal(fast.topk_ids, ref.topk_ids)
        np.testing.assert_array_equal(fast.topk_logits, ref.topk_logits)
        np.testing.assert_array_equal(fast.aligned_mask, ref.aligned_mask)
        assert (fast.aligned, fast.fallback, fast.positions) == (
            ref.aligned, ref.fallback, ref.positions)
        assert fast.positions == max(len(case["student_ids"]) - 1, 0)
        aligned_seen += fast.aligned
    assert aligned_seen > 0  # the cases exercise the aligned branch, not only fallbacks
