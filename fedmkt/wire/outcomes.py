"""``fedmkt.v1.SampleOutcomes`` ⇄ ``fedmkt.data.outcomes.SampleOutcomes`` (checked on receipt)."""

from __future__ import annotations

from fedmkt.data.outcomes import OutcomesError, SampleOutcomes
from fedmkt.wire.errors import WireError
from fedmkt.wire.v1 import outcomes_pb2


def outcomes_to_pb(outcomes: SampleOutcomes) -> outcomes_pb2.SampleOutcomes:
    return outcomes_pb2.SampleOutcomes(
        sample_ids=list(outcomes.sample_ids),
        columns=[outcomes_pb2.OutcomeColumn(metric=m, values=list(v))
                 for m, v in outcomes.values.items()])


def outcomes_from_pb(message: outcomes_pb2.SampleOutcomes) -> SampleOutcomes | None:
    """The outcomes in ``message``; None when it holds none. Raises ``WireError``
    (INVALID_ARGUMENT) for a message that breaks the limits of outcomes.proto."""
    if not message.sample_ids and not message.columns:
        return None
    metrics = [column.metric for column in message.columns]
    if len(set(metrics)) != len(metrics):
        raise WireError("sample outcomes: a metric appears in more than one column")
    try:
        return SampleOutcomes(tuple(message.sample_ids),
                              {c.metric: tuple(c.values) for c in message.columns})
    except OutcomesError as exc:
        raise WireError(f"sample outcomes: {exc}") from exc
