"""The training loop: schedule, accumulation, reproducibility, cancellation, loss going down."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from fedmkt.participant.training import (
    Cancelled,
    StepOutput,
    TrainOptions,
    derive_seed,
    lr_at,
    micro_batches,
    run_training,
)


def _data(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=gen)
    y = x @ torch.arange(1.0, 7.0) + 0.5
    return x, y


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Dropout(0.1),
                                torch.nn.Linear(16, 1))
    model[0].bias.requires_grad_(False)  # frozen parameters must stay as they are
    return model


def _step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    def step(indices):
        idx = torch.tensor(list(indices))
        pred = model(x[idx]).squeeze(-1)
        return StepOutput(((pred - y[idx]) ** 2).mean(), {"size": float(len(indices))})

    return step


def _options(**kw) -> TrainOptions:
    base = {"learning_rate": 0.05, "epochs": 4, "batch_size": 4, "weight_decay": 0.0,
            "seed": 5, "grad_clip": 0.0}
    base.update(kw)
    return TrainOptions(**base)


def test_lr_schedule_warms_up_linearly_then_decays_by_cosine() -> None:
    total, warmup, base = 10, 2, 1.0
    values = [lr_at(s, total, base, warmup) for s in range(total)]
    assert values[:2] == pytest.approx([0.5, 1.0])
    assert values[2] == pytest.approx(1.0)  # cosine starts at the peak
    assert values[6] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert all(a >= b for a, b in zip(values[2:], values[3:], strict=False))
    assert values[-1] > 0.0


def test_micro_batches_cover_every_item_once() -> None:
    batches = micro_batches(10, 3, torch.Generator().manual_seed(1))
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    assert sorted(i for b in batches for i in b) == list(range(10))


def test_loss_falls_and_only_trainable_parameters_change() -> None:
    x, y = _data()
    model = _model()
    frozen = model[0].bias.detach().clone()
    seen = []
    result = run_training(model, len(x), _step(model, x, y), _options(epochs=6),
                          progress=lambda *args: seen.append(args))
    assert result.epoch_losses[-1] < 0.5 * result.epoch_losses[0]
    assert torch.equal(model[0].bias, frozen)
    assert result.optimizer_steps == 6 * 6 == len(seen)
    assert seen[-1][:3] == ("train", 36, 36)
    assert not model.training  # handed back in eval mode


def test_same_seed_same_parameters_other_seed_differs() -> None:
    x, y = _data()
    runs = []
    for seed in (5, 5, 6):
        model = _model()
        run_training(model, len(x), _step(model, x, y), _options(seed=seed))
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_gradient_accumulation_matches_one_big_batch() -> None:
    x, y = _data(16)
    params = []
    for batch_size, accum in ((4, 1), (2, 2)):
        model = _model()
        model[1].p = 0.0  # no dropout: the two layouts must see the same numbers
        run_training(model, len(x), _step(model, x, y),
                     _options(batch_size=batch_size, grad_accum=accum, epochs=2))
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    # batch 4 = micro-batches 2 + 2 of the same shuffled order
    assert torch.allclose(params[0], params[1], atol=1e-6)


def test_cancel_stops_between_batches() -> None:
    x, y = _data()
    model = _model()
    cancel = threading.Event()
    calls = []

    def progress(*args):
        calls.append(args)
        if len(calls) == 2:
            cancel.set()

    with pytest.raises(Cancelled):
        run_training(model, len(x), _step(model, x, y), _options(), progress=progress,
                     cancel=cancel)
    assert len(calls) == 2


def test_metrics_are_sample_weighted_means() -> None:
    x, y = _data(10)
    model = _model()
    result = run_training(model, len(x), _step(model, x, y),
                          _options(batch_size=4, grad_accum=3, epochs=1, grad_clip=1.0))
    # one optimizer step over micro-batches of 4, 4, 2: the mean size weighted by size
    assert result.optimizer_steps == 1
    assert result.metrics["size"] == pytest.approx((4 * 4 + 4 * 4 + 2 * 2) / 10)
    assert "grad_norm" in result.metrics and result.metrics["lr"] > 0


def test_rejects_empty_data_and_frozen_models() -> None:
    model = _model()
    with pytest.raises(ValueError, match="nothing to train"):
        run_training(model, 0, lambda idx: None, _options())
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        run_training(model, 4, lambda idx: None, _options())


def test_derive_seed_is_stable_and_separates_phases() -> None:
    assert derive_seed(3, 0, 1) == derive_seed(3, 0, 1)
    assert len({derive_seed(3, r, p) for r in range(4) for p in (1, 2)}) == 8
