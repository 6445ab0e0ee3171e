"""The model-work table of a run report (DESIGN §11): what each step's model processed against
the least the algorithm needs.

Participants add ``work/<field>`` and ``floor/<field>`` to the metrics of every step they run
(see ``fedmkt.models.work``): tokens run forward, tokens back-propagated, positions at which the
LM head was evaluated. Knowledge steps carry the source's counts (sent with its stream). This
module sums them per step and participant and sets done against floor: a ratio of 1.00 means
the step did no model work beyond what FedMKT needs; padding, a full LM head or a recomputed
pass show up as ratios above 1.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from fedmkt.federation import events as ev
from fedmkt.federation.events import Event
from fedmkt.models.work import FIELDS, work_ratio

TARGET = 1.10  # the work ratio (tokens processed / floor) a step should stay within


def work_rows(events: list[Event]) -> list[dict[str, Any]]:
    """One row per (step, participant) that reported work, in first-seen order, summed over
    rounds: ``done``/``floor`` per field and ``ratio`` (forward + backward tokens) and
    ``head_ratio``."""
    sums: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for event in events:
        if event.kind != ev.STEP_FINISHED:
            continue
        metrics = event.metrics
        if not any(f"work/{name}" in metrics for name in FIELDS):
            continue
        row = sums[(event.step, event.participant)]
        row["calls"] += 1
        for name in FIELDS:
            row[f"work/{name}"] += float(metrics.get(f"work/{name}", 0.0))
            row[f"floor/{name}"] += float(metrics.get(f"floor/{name}", 0.0))
    out = []
    for (step, participant), row in sums.items():
        tokens = row["work/forward_tokens"] + row["work/backward_tokens"]
        floor = row["floor/forward_tokens"] + row["floor/backward_tokens"]
        out.append({
            "step": step, "participant": participant, "calls": int(row["calls"]),
            **{key: int(value) for key, value in row.items() if "/" in key},
            "ratio": work_ratio(tokens, floor),
            "head_ratio": work_ratio(row["work/head_positions"], row["floor/head_positions"]),
        })
    return out


def totals(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Done, floor and ratios over all rows."""
    done = sum(r["work/forward_tokens"] + r["work/backward_tokens"] for r in rows)
    floor = sum(r["floor/forward_tokens"] + r["floor/backward_tokens"] for r in rows)
    head = sum(r["work/head_positions"] for r in rows)
    head_floor = sum(r["floor/head_positions"] for r in rows)
    return {"tokens": done, "floor": floor, "ratio": work_ratio(done, floor),
            "head_positions": head, "head_floor": head_floor,
            "head_ratio": work_ratio(head, head_floor)}


def work_section(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Markdown lines: one table per run kind (``{"FedMKT": rows, "baseline": rows}``)."""
    if not any(runs.values()):
        return []
    lines = ["", "## Model work against the floor", "",
             "Tokens each step's model ran forward and backward, and positions at which it "
             "evaluated its LM head, summed over rounds, next to the floor: what the algorithm "
             "needs (each sample once per pass, the LM head only where logits are read, a "
             "shared prompt once for all its choices, nothing an earlier step already computed "
             f"for the same adapter). Ratio = done / floor; target ≤ {TARGET:.2f}. Knowledge "
             "steps count their source's pass; the LLM's one stream of `server_knowledge` is "
             "counted with its first destination."]
    for kind, rows in runs.items():
        if not rows:
            continue
        lines += ["", f"**{kind} run**", "",
                  "| step | participant | forward | backward | floor (fwd + bwd) | ratio | "
                  "LM-head positions | floor | head ratio |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(
                f"| {r['step']} | {r['participant']} | {r['work/forward_tokens']:,} | "
                f"{r['work/backward_tokens']:,} | "
                f"{r['floor/forward_tokens'] + r['floor/backward_tokens']:,} | "
                f"{r['ratio']:.2f} | {r['work/head_positions']:,} | "
                f"{r['floor/head_positions']:,} | {r['head_ratio']:.2f} |")
        total = totals(rows)
        lines.append(f"| **all** | | | | {total['floor']:,.0f} | **{total['ratio']:.2f}** | "
                     f"{total['head_positions']:,.0f} | {total['head_floor']:,.0f} | "
                     f"**{total['head_ratio']:.2f}** |")
    return lines
