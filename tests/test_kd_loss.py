"""Sparse KD against a dense reference (built here, in the test only), and the combined loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fedmkt.knowledge.kd_loss import (
    IGNORE_INDEX,
    TeacherTargets,
    combined_loss,
    sparse_kd_loss,
)
from fedmkt.knowledge.vocab_ops import logsumexp_and_gather

B, L, V, K = 3, 6, 13, 4


def make_teacher(seed: int, k: int = K) -> TeacherTargets:
    """Distinct ids per row, some padding slots, one all-padding row, a partly false mask."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.stack(
        [torch.stack([torch.randperm(V, generator=gen)[:k] for _ in range(L)]) for _ in range(B)]
    )
    logits = torch.randn(B, L, k, generator=gen) * 3
    ids[0, 1, k - 2 :] = -1  # padding slots
    logits[0, 1, k - 2 :] = 1e4  # ignored at padding slots
    ids[1, 2, :] = -1  # a row with no kept id: not a KD position
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[:, -1] = False
    mask[2, :] = False  # sample 2 has no KD position at all
    return TeacherTargets(ids, logits, mask)


def dense_kd(
    student_logits: torch.Tensor, teacher: TeacherTargets, temperature: float, kind: str
) -> torch.Tensor:
    """The reference's way: a dense [B, L, V] target distribution per teacher."""
    ids, logits, mask = teacher
    kept = ids >= 0
    probs = torch.softmax((logits / temperature).masked_fill(~kept, float("-inf")), dim=-1)
    probs = torch.nan_to_num(probs) * kept
    target = torch.zeros(student_logits.shape, dtype=student_logits.dtype)
    target.scatter_add_(-1, ids.clamp(min=0), probs)
    log_q = torch.log_softmax(student_logits / temperature, dim=-1)
    if kind == "ce":
        per_position = -(target * log_q).sum(-1)
    else:
        per_position = (torch.xlogy(target, target) - target * log_q).sum(-1)
    positions = mask & kept.any(-1)
    loss = (per_position * positions).sum(1) / positions.sum(1).clamp(min=1)
    return loss * temperature**2


def dense_combined(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teachers: list[TeacherTargets],
    weights: torch.Tensor,
    kd_alpha: float,
    temperature: float,
    kind: str,
) -> torch.Tensor:
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    token_ce = F.cross_entropy(
        student_logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )
    ce = token_ce.sum(1) / (targets != IGNORE_INDEX).sum(1).clamp(min=1)
    kd = sum(weights[:, t] * dense_kd(student_logits, teachers[t], temperature, kind)
             for t in range(len(teachers)))
    distilled = (weights > 0).any(1)
    return torch.where(distilled, kd_alpha * ce + (1 - kd_alpha) * kd, ce).mean()


def student(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(B, L, V, generator=gen) * 2).requires_grad_(True)


@pytest.mark.parametrize("kind", ["ce", "kl"])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_sparse_kd_equals_dense_reference_values_and_gradients(kind, temperature) -> None:
    teacher = make_teacher(1)
    ours_in, ref_in = student(), student()
    ours = sparse_kd_loss(ours_in, *teacher, temperature=temperature, kind=kind)
    ref = dense_kd(ref_in, teacher, temperature, kind)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert ours[2].item() == 0.0  # no KD position in sample 2
    (ours * torch.tensor([1.0, -2.0, 0.5])).sum().backward()
    (ref * torch.tensor([1.0, -2.0, 0.5])).sum().backward()
    assert ours_in.grad is not None and ref_in.grad is not None
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=1e-5, atol=1e-6)


def test_sparse_kd_hand_computed_values() -> None:
    logits = torch.zeros(1, 1, 3)
    ids = torch.tensor([[[0, 2, -1]]])
    teacher_logits = torch.tensor([[[0.0, 0.0, 7.0]]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    ce = sparse_kd_loss(logits, ids, teacher_logits, mask, kind="ce")
    kl = sparse_kd_loss(logits, ids, teacher_logits, mask, kind="kl")
    assert ce.item() == pytest.approx(math.log(3))
    assert kl.item() == pytest.approx(math.log(1.5))
    hot = sparse_kd_loss(logits, ids, teacher_logits, mask, temperature=2.0, kind="ce")
    assert hot.item() == pytest.approx(4 * math.log(3))  # same distributions, times T²


def make_labels() -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    labels = torch.randint(0, V, (B, L), generator=gen)
    labels[:, :2] = IGNORE_INDEX  # the prompt
    labels[1, -1] = IGNORE_INDEX  # padding
    return labels


@pytest.mark.parametrize("kind", ["ce", "kl"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_combined_loss_equals_dense_reference(kind, temperature) -> None:
    labels = make_labels()
    teachers = [make_teacher(2), make_teacher(3, k=2), make_teacher(4)]
    weights = torch.tensor([[0.2, 0.0, 0.8], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    ours_in, ref_in = student(5), student(5)
    ours = combined_loss(ours_in, labels, teachers, weights, kd_alpha=0.7,
                         temperature=temperature, kind=kind)
    ref = dense_combined(ref_in, labels, teachers, weights, 0.7, temperature, kind)
    torch.testing.assert_close(ours.loss, ref, rtol=1e-5, atol=1e-6)
    ours.loss.backward()
    ref.backward()
    assert ours_in.grad is not None and ref_in.grad is not None
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=1e-5, atol=1e-7)


def test_combined_loss_weighting_per_sample() -> None:
    labels = make_labels()
    teachers = [make_teacher(2), make_teacher(3)]
    logits = student(6)
    weights = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.5, 0.5]])
    out = combined_loss(logits, labels, teachers, weights, kd_alpha=0.9)

    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    ce = torch.stack([
        F.cross_entropy(logits[b], targets[b], ignore_index=IGNORE_INDEX) for b in range(B)
    ])
    kd0 = sparse_kd_loss(logits, *teachers[0])
    kd1 = sparse_kd_loss(logits, *teachers[1])
    torch.testing.assert_close(out.ce, ce.detach())
    expected_kd = torch.stack([kd0[0], torch.tensor(0.0), 0.5 * kd0[2] + 0.5 * kd1[2]])
    torch.testing.assert_close(out.kd, expected_kd.detach())
    # sample 1 has no teacher: plain CE, not 0.9 * CE
    per_sample = torch.stack(
        [0.9 * ce[0] + 0.1 * kd0[0], ce[1], 0.9 * ce[2] + 0.1 * expected_kd[2]]
    )
    torch.testing.assert_close(out.loss, per_sample.mean())
    assert out.distilled.tolist() == [True, False, True]
    assert out.distilled_fraction == pytest.approx(2 / 3)
    metrics = out.metrics()
    assert metrics["kd"] == pytest.approx(float((expected_kd[0] + expected_kd[2]).detach() / 2))
    assert metrics["loss"] == pytest.approx(out.loss.item())


def test_kd_alpha_one_is_plain_cross_entropy_and_no_teachers_works() -> None:
    labels = make_labels()
    logits = student(8)
    with_teacher = combined_loss(logits, labels, [make_teacher(2)], torch.ones(B, 1), kd_alpha=1)
    without = combined_loss(logits, labels, [], torch.zeros(B, 0))
    torch.testing.assert_close(with_teacher.loss, without.loss)
    assert without.distilled_fraction == 0.0


def test_no_dense_vocab_sized_tensor_is_saved_for_backward() -> None:
    """Only the student's own logits may be kept for backward at [B, L, V] size."""
    big = 64
    logits = torch.randn(B, L, big * V, requires_grad=True)
    labels = torch.randint(0, big * V, (B, L))
    teachers = [
        TeacherTargets(torch.randint(0, big * V, (B, L, 8)), torch.randn(B, L, 8),
                       torch.ones(B, L, dtype=torch.bool))
        for _ in range(4)
    ]
    saved: list[tuple[int, int]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append((t.numel(), t.untyped_storage().data_ptr()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = combined_loss(logits, labels, teachers, torch.full((B, 4), 0.25), temperature=2.0)
    vocab_sized = [ptr for numel, ptr in saved if numel >= B * L * big * V // 2]
    assert vocab_sized, "the logits themselves are expected among the saved tensors"
    assert set(vocab_sized) == {logits.untyped_storage().data_ptr()}
    out.loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_bfloat16_student_logits_give_bfloat16_gradients() -> None:
    labels = make_labels()
    logits = student(9).detach().to(torch.bfloat16).requires_grad_(True)
    out = combined_loss(logits, labels, [make_teacher(2)], torch.ones(B, 1))
    out.loss.backward()
    assert logits.grad is not None and logits.grad.dtype == torch.bfloat16
    ref_in = student(9).detach().to(torch.bfloat16).float().requires_grad_(True)
    ref = dense_combined(ref_in, labels, [make_teacher(2)], torch.ones(B, 1), 0.9, 1.0, "ce")
    torch.testing.assert_close(out.loss, ref, rtol=1e-4, atol=1e-4)


def test_logsumexp_and_gather_matches_torch() -> None:
    logits = torch.randn(5, 1000, requires_grad=True)
    ids = torch.randint(0, 1000, (5, 3))
    lse, gathered = logsumexp_and_gather(logits, ids, temperatures=(1.0, 0.5))
    torch.testing.assert_close(lse[0], torch.logsumexp(logits, -1))
    torch.testing.assert_close(lse[1], torch.logsumexp(logits / 0.5, -1))
    torch.testing.assert_close(gathered, logits.gather(-1, ids))
    (lse[0].sum() + 3 * lse[1].sum() - gathered.sum()).backward()
    ref_in = logits.detach().clone().requires_grad_(True)
    ref = (torch.logsumexp(ref_in, -1).sum() + 3 * torch.logsumexp(ref_in / 0.5, -1).sum()
           - ref_in.gather(-1, ids).sum())
    ref.backward()
    assert logits.grad is not None
    torch.testing.assert_close(logits.grad, ref_in.grad)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ids_value": V}, "teacher ids must be in"),
        ({"ids_value": -2}, "teacher ids must be in"),
        ({"logit_value": float("nan")}, "finite"),
        ({"weights": torch.ones(B, 2)}, "weights must be"),
        ({"weights": -torch.ones(B, 1)}, ">= 0"),
        ({"kind": "js"}, "kind"),
        ({"temperature": 0.0}, "temperature"),
        ({"kd_alpha": 1.5}, "kd_alpha"),
    ],
)
def test_bad_inputs_are_rejected(change, message) -> None:
    ids, teacher_logits, mask = make_teacher(2)
    if "ids_value" in change:
        ids = ids.clone()
        ids[0, 0, 0] = change["ids_value"]
    if "logit_value" in change:
        teacher_logits = teacher_logits.clone()
        teacher_logits[0, 0, 0] = change["logit_value"]
    with pytest.raises(ValueError, match=message):
        combined_loss(
            student(),
            make_labels(),
            [(ids, teacher_logits, mask)],
            change.get("weights", torch.ones(B, 1)),
            kd_alpha=change.get("kd_alpha", 0.9),
            temperature=change.get("temperature", 1.0),
            kind=change.get("kind", "ce"),
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_the_dense_reference(dtype) -> None:
    labels = make_labels()
    teachers = [make_teacher(2), make_teacher(3, k=2)]
    weights = torch.tensor([[0.5, 0.5], [0.0, 0.0], [1.0, 0.0]])
    cuda_in = student(10).detach().to("cuda", dtype).requires_grad_(True)
    out = combined_loss(cuda_in, labels.cuda(), [[x.cuda() for x in t] for t in teachers],
                        weights.cuda(), kd_alpha=0.8, temperature=2.0)
    out.loss.backward()
    ref_in = student(10).detach().to(dtype).float().requires_grad_(True)
    ref = dense_combined(ref_in, labels, teachers, weights, 0.8, 2.0, "ce")
    ref.backward()
    assert cuda_in.grad is not None and ref_in.grad is not None
    assert cuda_in.grad.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.loss.cpu(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(cuda_in.grad.float().cpu(), ref_in.grad, rtol=tol, atol=tol)
