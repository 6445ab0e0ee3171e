"""Teacher selection: dualmince, fate and weighted on hand-computed losses."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedmkt.knowledge.selection import NO_TEACHER, SELF, Strategy, select_teachers

NAN = float("nan")


def test_dualmince_picks_best_teacher_only_when_it_beats_the_student() -> None:
    student = np.array([5.0, 1.0, 3.0, 2.0])
    teachers = np.array(
        [
            [4.0, 2.0, 3.0, 1.5],  # teacher 0
            [6.0, 0.5, 1.0, 2.5],  # teacher 1
        ]
    )
    sel = select_teachers(student, teachers, "dualmince")
    # sample 0: best is t0 (4 < 5) -> t0; sample 1: t1 (0.5 < 1); sample 2: t1 (1 < 3);
    # sample 3: t0 (1.5 < 2)
    np.testing.assert_array_equal(sel.chosen, [0, 1, 1, 0])
    expected = np.array([[1, 0], [0, 1], [0, 1], [1, 0]], dtype=np.float32)
    np.testing.assert_array_equal(sel.weights, expected)
    assert sel.weights.dtype == np.float32
    assert not sel.use_self.any()
    np.testing.assert_array_equal(sel.teacher_counts, [2, 2])
    assert sel.distilled_fraction == 1.0
    assert sel.strategy is Strategy.DUALMINCE


def test_dualmince_skips_samples_where_no_teacher_is_strictly_better() -> None:
    student = np.array([1.0, 2.0, 3.0])
    teachers = np.array([[1.0, 2.5, 2.9], [1.5, 2.0, 4.0]])  # tie with student on 0 and 1
    sel = select_teachers(student, teachers)  # default strategy is dualmince
    np.testing.assert_array_equal(sel.chosen, [NO_TEACHER, NO_TEACHER, 0])
    np.testing.assert_array_equal(sel.distilled, [False, False, True])
    assert sel.distilled_fraction == pytest.approx(1 / 3)
    np.testing.assert_array_equal(sel.weights.sum(axis=1), [0, 0, 1])


def test_ties_between_teachers_go_to_the_lowest_index() -> None:
    student = np.array([9.0, 9.0])
    teachers = np.array([[3.0, 5.0], [2.0, 5.0], [2.0, 5.0]])
    sel = select_teachers(student, teachers, Strategy.DUALMINCE)
    np.testing.assert_array_equal(sel.chosen, [1, 0])
    np.testing.assert_array_equal(sel.teacher_counts, [1, 1, 0])


def test_nan_teacher_loss_is_never_selected() -> None:
    student = np.array([5.0, 5.0, 5.0])
    teachers = np.array([[NAN, 1.0, NAN], [4.0, NAN, NAN]])
    sel = select_teachers(student, teachers, "dualmince")
    np.testing.assert_array_equal(sel.chosen, [1, 0, NO_TEACHER])
    assert not np.isnan(sel.weights).any()


def test_fate_falls_back_to_the_students_own_snapshot() -> None:
    student = np.array([1.0, 3.0, 2.0])
    teachers = np.array([[2.0, 1.0, NAN]])
    sel = select_teachers(student, teachers, "fate")
    np.testing.assert_array_equal(sel.chosen, [SELF, 0, SELF])
    np.testing.assert_array_equal(sel.use_self, [True, False, True])
    assert sel.self_count == 2
    assert sel.distilled_fraction == 1.0
    with_self = sel.weights_with_self()
    np.testing.assert_array_equal(with_self, [[0, 1], [1, 0], [0, 1]])
    assert with_self.dtype == np.float32


def test_weighted_is_a_softmax_of_negative_losses() -> None:
    student = np.array([0.0, 0.0])
    teachers = np.array([[1.0, 2.0], [2.0, NAN], [4.0, 2.0]])
    sel = select_teachers(student, teachers, "weighted", temperature=2.0)
    r = np.exp([-0.5, -1.0, -2.0])
    np.testing.assert_allclose(sel.weights[0], r / r.sum(), rtol=1e-6)
    np.testing.assert_allclose(sel.weights[1], [0.5, 0.0, 0.5], rtol=1e-6)
    np.testing.assert_array_equal(sel.chosen, [0, 0])
    # the student's loss is not consulted: it is 0, better than every teacher
    assert sel.distilled_fraction == 1.0
    np.testing.assert_array_equal(sel.teacher_counts, [2, 1, 2])


def test_weighted_is_stable_for_large_losses_and_all_nan_rows() -> None:
    student = np.array([1.0, 1.0])
    teachers = np.array([[1000.0, NAN], [1001.0, NAN]])
    sel = select_teachers(student, teachers, "weighted")
    np.testing.assert_allclose(sel.weights[0], [1 / (1 + math.exp(-1)), 1 / (1 + math.e)],
                               rtol=1e-6)
    np.testing.assert_array_equal(sel.weights[1], [0.0, 0.0])
    np.testing.assert_array_equal(sel.chosen, [0, NO_TEACHER])


def test_no_teachers_means_no_kd_or_self_for_fate() -> None:
    student = np.array([1.0, 2.0])
    none = np.zeros((0, 2))
    assert select_teachers(student, none, "dualmince").distilled_fraction == 0.0
    assert select_teachers(student, none, "fate").use_self.all()
    assert select_teachers(student, none, "weighted").weights.shape == (2, 0)


@pytest.mark.parametrize(
    ("student", "teachers", "strategy", "message"),
    [
        (np.array([1.0]), np.array([[1.0]]), "best", "unknown selection strategy"),
        (np.array([1.0, 2.0]), np.array([[1.0]]), "dualmince", r"\[T, N\]"),
        (np.array([NAN]), np.array([[1.0]]), "dualmince", "student_loss must be finite"),
        (np.array([1.0]), np.array([[-0.1]]), "dualmince", ">= 0"),
    ],
)
def test_bad_inputs_are_rejected(student, teachers, strategy, message) -> None:
    with pytest.raises(ValueError, match=message):
        select_teachers(student, teachers, strategy)


def test_weighted_rejects_non_positive_temperature() -> None:
    with pytest.raises(ValueError, match="temperature"):
        select_teachers(np.array([1.0]), np.array([[1.0]]), "weighted", temperature=0.0)
