"""Did FedMKT help each model? Paired bootstrap verdicts from per-sample outcomes (DESIGN §11).

For every participant the report compares its FedMKT result (its last evaluation in the FedMKT
run) with each baseline on the same held-out samples: the baseline run's last evaluation
(public-only fine-tuning for the LLM, standalone private-only training for an SLM), for an SLM
the ablation run's (private + public CE without KD: does FedMKT beat the extra data, or only
the lack of it?) and the zero-shot evaluation (round 0). Each comparison is the paired bootstrap of
``fedmkt.federation.stats``; the verdict ("helped", "no measurable difference", "hurt") comes from
its 95 % interval, never from the point estimate. A comparison without per-sample outcomes on
both sides gives no verdict, and says so.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from fedmkt.data.outcomes import OutcomesError, SampleOutcomes, paired_columns
from fedmkt.federation import events as ev
from fedmkt.federation.events import Event
from fedmkt.federation.stats import NO_DIFFERENCE, paired_bootstrap

# Seeds of the bootstrap: fixed, so the same run always gives the same intervals.
BOOTSTRAP_SEED = 20240601
RESAMPLES = 10_000
# Runs beside the baseline that only clients are compared with (the LLM's part of each is its
# baseline's public-only CE), with how the report names them.
CLIENT_ARMS = (("ablation", "private + public CE without KD"), ("fedavg", "FedAvg"))


def sample_outcomes(events: list[Event]) -> dict[str, dict[int, SampleOutcomes]]:
    """participant → round → per-sample outcomes of its evaluation (where it sent them)."""
    out: dict[str, dict[int, SampleOutcomes]] = defaultdict(dict)
    for event in events:
        if (event.kind == ev.METRICS and event.step == "evaluate" and event.participant
                and event.outcomes is not None):
            out[event.participant][event.round] = event.outcomes
    return dict(out)


def compare(mine: SampleOutcomes | None, other: SampleOutcomes | None, metric: str
            ) -> dict[str, Any]:
    """The paired difference ``mine - other`` on ``metric`` as a JSON-ready dict; with
    ``verdict`` None and a ``reason`` when it cannot be computed."""
    if mine is None or other is None:
        return {"verdict": None, "reason": "no per-sample results"}
    try:
        a, b = paired_columns(mine, other, metric)
    except (OutcomesError, KeyError) as exc:
        return {"verdict": None, "reason": str(exc).strip("'\"")}
    diff = paired_bootstrap(a, b, resamples=RESAMPLES, seed=BOOTSTRAP_SEED)
    return {"verdict": diff.verdict, "mean": diff.mean, "low": diff.low, "high": diff.high,
            "n": diff.n, "confidence": diff.confidence, "mine": float(a.mean()),
            "other": float(b.mean()), "missing": max(len(mine), len(other)) - diff.n}


def _last(rounds: dict[int, SampleOutcomes]) -> SampleOutcomes | None:
    return rounds[max(rounds)] if rounds else None


def verdicts(rows: list[dict[str, Any]], fedmkt: dict[str, dict[int, SampleOutcomes]],
             baseline: dict[str, dict[int, SampleOutcomes]], metric: str,
             client_arms: dict[str, dict[str, dict[int, SampleOutcomes]]] | None = None
             ) -> None:
    """Add ``vs_baseline``, ``vs_zero_shot`` and, for clients, ``vs_<arm>`` for each run of
    ``client_arms`` (``CLIENT_ARMS``: the ablation, FedAvg) to each comparison row (in place)."""
    for row in rows:
        name = row["participant"]
        mine = fedmkt.get(name, {})
        final = mine.get(row["fedmkt_round"]) if row.get("fedmkt_round") is not None else None
        if row.get("note"):  # not trained in this scenario: nothing to compare
            row["vs_baseline"] = row["vs_zero_shot"] = {"verdict": None, "reason": row["note"]}
            continue
        row["vs_baseline"] = compare(final, _last(baseline.get(name, {})), metric)
        row["vs_zero_shot"] = compare(final, mine.get(0), metric)
        if row["role"] == "client":
            for arm, outcomes in (client_arms or {}).items():
                row[f"vs_{arm}"] = compare(final, _last(outcomes.get(name, {})), metric)


def emphasised(verdict: str) -> str:
    """A verdict as the documents print it: "helped" / "hurt" in bold."""
    return verdict if verdict == NO_DIFFERENCE else f"**{verdict}**"


def _interval(result: dict[str, Any]) -> str:
    pct = f"{100 * result['confidence']:.0f} %"
    return (f"{result['mean']:+.3f} [{result['low']:+.3f}, {result['high']:+.3f}] "
            f"({pct} paired bootstrap, n = {result['n']})")


def verdict_lines(summary: dict[str, Any]) -> list[str]:
    """One line per model: FedMKT against each baseline, with the interval and the verdict."""
    metric = summary["metric"]
    lines = []
    for row in summary["comparison"]:
        head = f"- **{row['participant']}** ({row['role']}, {row['model']})"
        if row.get("note"):
            lines.append(f"{head}: no verdict ({row['note']}).")
            continue
        parts = []
        against = [("vs_baseline", row["baseline_kind"])]
        against += [(f"vs_{arm}", what) for arm, what in CLIENT_ARMS if f"vs_{arm}" in row]
        against.append(("vs_zero_shot", "zero-shot"))
        for key, what in against:
            result = row.get(key) or {"verdict": None, "reason": "not compared"}
            if result["verdict"] is None:
                parts.append(f"vs {what}: no verdict ({result['reason']})")
                continue
            parts.append(f"vs {what} {result['other']:.3f}: {emphasised(result['verdict'])}, "
                         f"{_interval(result)}")
        fed = row.get("fedmkt")
        shown = "—" if fed is None else f"{fed:.3f}"
        lines.append(f"{head}: FedMKT {metric} {shown}; " + "; ".join(parts) + ".")
    return lines
