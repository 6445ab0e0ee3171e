"""The run report: every number measured in the run, from the run's events.

``summarize`` turns the events of a FedMKT run (and of its baseline run, when there is one)
into a plain dict (written as ``metrics.json``): evaluation metrics per participant per round,
the comparison table, per-round wall/compute/overhead, per-step timings, drops and alignment
statistics. ``render_markdown`` writes ``report.md`` from it; ``plot_metrics`` the PNG of every
model's evaluation metric per round (matplotlib, Agg backend).

Comparison (held-out split, the final round each participant was evaluated in):
LLM: zero-shot (round 0) | public-data-only fine-tuning (baseline run) | FedMKT;
SLM: zero-shot | standalone, private data only (baseline run) | FedMKT.
Each FedMKT-vs-baseline difference comes with its paired bootstrap interval and the verdict the
interval gives (``fedmkt.federation.verdicts``).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmkt.config import FederationConfig, Scenario
from fedmkt.federation import events as ev
from fedmkt.federation.events import Event
from fedmkt.federation.verdicts import CLIENT_ARMS, sample_outcomes, verdict_lines, verdicts
from fedmkt.federation.work_report import work_rows, work_section

PRIMARY_METRICS = ("acc", "accuracy", "acc_norm", "rouge_l")
OVERHEAD_TARGET = 0.15


@dataclass
class RunOutcome:
    """What the embedded run knows about one run (FedMKT or baseline)."""

    run_id: str
    state: str
    error: str = ""
    events: list[Event] = field(default_factory=list)
    wall_seconds: float = 0.0


def evaluations(events: list[Event]) -> dict[str, dict[int, dict[str, float]]]:
    """participant → round → evaluation metrics."""
    out: dict[str, dict[int, dict[str, float]]] = defaultdict(dict)
    for event in events:
        if event.kind == ev.METRICS and event.step == "evaluate" and event.participant:
            out[event.participant][event.round] = dict(event.metrics)
    return dict(out)


def primary_metric(evals: dict[str, dict[int, dict[str, float]]]) -> str:
    keys = {k for rounds in evals.values() for metrics in rounds.values() for k in metrics}
    for name in PRIMARY_METRICS:
        if name in keys:
            return name
    return sorted(keys - {"n", "compute_seconds", "wall_seconds"})[0] if keys else "acc"


def round_timings(events: list[Event]) -> list[dict[str, float]]:
    rows = []
    for event in events:
        if event.kind == ev.METRICS and event.step == "round_done":
            rows.append({"round": event.round, **event.metrics})
    return rows


def step_timings(events: list[Event]) -> list[dict[str, Any]]:
    rows = []
    for event in events:
        if event.kind == ev.STEP_FINISHED:
            rows.append({"round": event.round, "step": event.step,
                         "participant": event.participant,
                         "wall_seconds": event.metrics.get("wall_seconds", 0.0),
                         "compute_seconds": event.metrics.get("compute_seconds"),
                         **({"aligned_share": event.metrics["aligned_share"]}
                            if "aligned_share" in event.metrics else {})})
    return rows


def selections(events: list[Event], server: str = "") -> list[dict[str, Any]]:
    """Per distill step: the share of public samples distilled, which teachers were chosen, the
    share of the received knowledge's positions projected from a teacher (the rest fell back to
    one-hot targets) and the step's losses (CE, KD, total)."""
    projected: dict[tuple[int, str], list[float]] = defaultdict(list)
    for event in events:
        if event.kind == ev.STEP_FINISHED and "aligned_share" in event.metrics:
            # client_knowledge: a client's knowledge on its way to the server (``server``);
            # server_knowledge: the server's knowledge on its way to that client
            student = server if event.step == "client_knowledge" else event.participant
            projected[(event.round, student)].append(event.metrics["aligned_share"])
    rows = []
    for event in events:
        if event.kind == ev.STEP_FINISHED and event.step == "distill":
            m = event.metrics
            shares = projected.get((event.round, event.participant))
            rows.append({
                "round": event.round, "participant": event.participant,
                "samples": int(m.get("samples", 0)),
                "distilled_fraction": m.get("distilled_fraction"),
                "selected": {k.split("/", 1)[1]: int(v) for k, v in sorted(m.items())
                             if k.startswith("selected/")},
                "projected_share": sum(shares) / len(shares) if shares else None,
                "ce": m.get("ce"), "kd": m.get("kd"), "loss": m.get("loss"),
            })
    return rows


def _final(rounds: dict[int, dict[str, float]], metric: str, *, first: bool = False
           ) -> tuple[int, float] | None:
    usable = sorted(r for r, m in rounds.items() if metric in m)
    if not usable:
        return None
    chosen = usable[0] if first else usable[-1]
    return chosen, rounds[chosen][metric]


def comparison(config: FederationConfig, fedmkt: dict, baseline: dict, metric: str,
               client_arms: dict[str, dict] | None = None) -> list[dict[str, Any]]:
    rows = []
    for spec in config.participants:
        untrained = spec.role == "server" and config.scenario == Scenario.LLM_TO_SLM
        mine = fedmkt.get(spec.name, {})
        zero = mine.get(0, {}).get(metric)
        fed = _final({r: m for r, m in mine.items() if r > 0} or mine, metric)
        base = _final(baseline.get(spec.name, {}), metric)
        row = {
            "participant": spec.name, "role": spec.role, "model": spec.model,
            "zero_shot": zero,
            "baseline_kind": "not trained" if untrained else (
                "public-only fine-tuning" if spec.role == "server"
                else "standalone (private only)"),
            "baseline": None if base is None else base[1],
            # clients only: the LLM's ablation and FedAvg runs are its baseline (public CE)
            **{arm: _client_final(spec, (client_arms or {}).get(arm), metric)
               for arm, _ in CLIENT_ARMS},
            "fedmkt": None if fed is None else fed[1],
            "fedmkt_round": None if fed is None else fed[0],
        }
        row["note"] = "the LLM is not trained in LLM→SLM only" if untrained else ""
        rows.append(row)
    return rows


def _client_final(spec: Any, evals: dict | None, metric: str) -> float | None:
    if spec.role == "server" or not evals:
        return None
    final = _final(evals.get(spec.name, {}), metric)
    return None if final is None else final[1]


def summarize(config: FederationConfig, fedmkt: RunOutcome, baseline: RunOutcome | None, *,
              startup_seconds: float = 0.0, total_seconds: float = 0.0,
              adapters: dict[str, dict[str, Any]] | None = None,
              ablation: RunOutcome | None = None,
              fedavg: RunOutcome | None = None) -> dict[str, Any]:
    evals = evaluations(fedmkt.events)
    base_evals = evaluations(baseline.events) if baseline is not None else {}
    extra = {"ablation": ablation, "fedavg": fedavg}  # the runs of CLIENT_ARMS
    ran = {arm: run for arm, run in extra.items() if run is not None}
    extra_evals = {arm: evaluations(run.events) for arm, run in ran.items()}
    metric = primary_metric({**evals, **base_evals})
    rounds = round_timings(fedmkt.events)
    setup = [e.metrics for e in fedmkt.events if e.kind == ev.METRICS and e.step == "setup"]
    trained = [r for r in rounds if r["round"] >= 1]
    steps = step_timings(fedmkt.events)
    reported = any(s["compute_seconds"] is not None
                   for s in steps if s["step"] in ("train_local", "distill", "evaluate"))
    shares = [r["overhead_share"] for r in trained if "overhead_share" in r]
    round_wall = sum(r.get("wall_seconds", 0.0) for r in trained)
    round_compute = sum(r.get("compute_seconds", 0.0) for r in trained)
    pipes = [s for s in steps if "aligned_share" in s]
    rows = comparison(config, evals, base_evals, metric, extra_evals)
    per_sample = {"fedmkt": sample_outcomes(fedmkt.events),
                  "baseline": sample_outcomes(baseline.events) if baseline is not None else {},
                  **{arm: sample_outcomes(run.events) if run is not None else {}
                     for arm, run in extra.items()}}
    verdicts(rows, per_sample["fedmkt"], per_sample["baseline"], metric,
             {arm: per_sample[arm] for arm in ran})
    runs_of_arms: dict[str, Any] = {}
    for arm, run in extra.items():
        runs_of_arms.update({f"{arm}_run_id": run.run_id if run else None,
                             f"{arm}_state": run.state if run else None,
                             f"{arm}_error": run.error if run else None})
    return {
        "run_id": fedmkt.run_id,
        "name": config.name,
        "scenario": str(config.scenario),
        "task": config.task.name,
        "rounds": config.rounds,
        "state": fedmkt.state,
        "error": fedmkt.error,
        "baseline_run_id": baseline.run_id if baseline else None,
        "baseline_state": baseline.state if baseline else None,
        "baseline_error": baseline.error if baseline else None,
        **runs_of_arms,
        "metric": metric,
        "participants": {p.name: {"role": p.role, "model": p.model}
                         for p in config.participants},
        "evaluation": _json_rounds(evals),
        "baseline_evaluation": _json_rounds(base_evals),
        **{f"{arm}_evaluation": _json_rounds(extra_evals.get(arm, {})) for arm in extra},
        "comparison": rows,
        # per run and participant: the per-sample outcomes of every evaluation (pooled
        # comparisons across runs, e.g. the seeds of an experiment)
        "sample_outcomes": {run: {name: {str(r): o.to_json() for r, o in sorted(rounds.items())}
                                  for name, rounds in by_name.items()}
                            for run, by_name in per_sample.items()},
        "rounds_timing": rounds,
        "steps": steps,
        "overhead": {
            "mean_round_share": sum(shares) / len(shares) if shares else None,
            "total_round_share": (round_wall - round_compute) / round_wall if round_wall else None,
            "target": OVERHEAD_TARGET,
            "compute_reported": reported,
            "startup_seconds": startup_seconds,
            "setup_seconds": sum(m.get("setup_seconds", 0.0) for m in setup),
            "fedmkt_wall_seconds": fedmkt.wall_seconds,
            "baseline_wall_seconds": baseline.wall_seconds if baseline else None,
            **{f"{arm}_wall_seconds": run.wall_seconds if run else None
               for arm, run in extra.items()},
            "total_seconds": total_seconds,
        },
        "alignment": {
            "pipes": len(pipes),
            "mean_aligned_share": (sum(p["aligned_share"] for p in pipes) / len(pipes)
                                   if pipes else None),
        },
        "selection": selections(fedmkt.events, config.server.name),
        "work": {"FedMKT": work_rows(fedmkt.events),
                 "baseline": work_rows(baseline.events) if baseline is not None else []},
        "drops": [{"round": e.round, "participant": e.participant, "message": e.message}
                  for e in fedmkt.events if e.kind == ev.PARTICIPANT_DROPPED],
        "adapters": adapters or {},
    }


def _json_rounds(evals: dict[str, dict[int, dict[str, float]]]) -> dict[str, dict[str, Any]]:
    return {name: {str(r): m for r, m in sorted(rounds.items())} for name, rounds in evals.items()}


# --------------------------------------------------------------------------- markdown


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}"


def _selection_table(summary: dict[str, Any]) -> list[str]:
    rows = summary.get("selection") or []
    if not rows:
        return []
    lines = ["", "## Knowledge distilled (FedMKT run)", "",
             "Selection keeps a teacher's knowledge for a public sample only where that teacher "
             "beats the student on it (answer NLL); a student nobody beats trains on CE alone, "
             "exactly like its baseline.", "",
             "Positions projected: the share of the received knowledge's positions whose "
             "distribution was projected from the teacher's top-k (the rest are one-hot "
             "targets). CE, KD: the step's mean losses (loss = λ·CE + (1-λ)·KD).", "",
             "| round | student | public samples | distilled | teachers chosen | positions "
             "projected | CE | KD | loss |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        fraction, share = row["distilled_fraction"], row.get("projected_share")
        chosen = ", ".join(f"{name} ×{n}" for name, n in row["selected"].items() if n) or "none"
        lines.append(f"| {row['round']} | {row['participant']} | {row['samples']} | "
                     f"{'—' if fraction is None else f'{fraction:.0%}'} | {chosen} | "
                     f"{'—' if share is None else f'{share:.0%}'} | {_fmt(row.get('ce'))} | "
                     f"{_fmt(row.get('kd'))} | {_fmt(row.get('loss'))} |")
    return lines


def render_markdown(summary: dict[str, Any], plot_file: str | None = None) -> str:
    metric = summary["metric"]
    lines = [f"# FedMKT run `{summary['run_id']}`", ""]
    lines += [f"Federation **{summary['name']}** ({summary['scenario']}), "
              f"task **{summary['task']}**, {summary['rounds']} rounds. "
              f"Run state: **{summary['state']}**"
              + (f"; baseline run `{summary['baseline_run_id']}`: "
                 f"**{summary['baseline_state']}**" if summary["baseline_run_id"] else "") + "."]
    for kind in ("ablation", "fedavg"):
        if summary.get(f"{kind}_run_id"):
            lines[-1] = lines[-1][:-1] + (f"; {kind} run `{summary[f'{kind}_run_id']}`: "
                                          f"**{summary[f'{kind}_state']}**.")
    for key, what in (("error", "FedMKT run"), ("baseline_error", "baseline run"),
                      ("ablation_error", "ablation run"), ("fedavg_error", "FedAvg run")):
        if summary.get(key):
            lines += ["", f"> The {what} failed: {summary[key]}"]
    lines += ["", f"## Verdict ({metric} on the held-out split)", ""]
    lines += ["FedMKT's last evaluation against each baseline on the same samples: the mean "
              "paired difference with its 95 % paired bootstrap interval. \"helped\" or "
              "\"hurt\" only when the whole interval is on one side of zero.", ""]
    lines += verdict_lines(summary)
    lines += ["", f"## Results on the held-out split ({metric})", ""]
    lines += ["Every number below was measured in this run (zero-shot: evaluation before round "
              "1; baselines: a separate run of the same federation with knowledge transfer "
              "switched off, on fresh participant processes).", ""]
    # the ablation's column always (empty without that run), FedAvg's where it ran
    columns = [("ablation", "private + public CE, no KD")]
    if summary.get("fedavg_run_id"):
        columns.append(("fedavg", "FedAvg"))
    lines += ["| participant | role | model | zero-shot | baseline | "
              + "".join(f"{title} | " for _, title in columns) + "FedMKT | vs baseline | n |",
              "|---|---|---|---|---|" + "---|" * len(columns) + "---|---|---|"]
    for row in summary["comparison"]:
        base = f"{_fmt(row['baseline'])} ({row['baseline_kind']})"
        arms = " | ".join("= baseline" if row["role"] == "server" else _fmt(row.get(arm))
                          for arm, _ in columns)
        result = row.get("vs_baseline") or {"verdict": None, "reason": "not compared"}
        if result["verdict"] is None:
            against, n = f"no verdict ({result['reason']})", "—"
        else:
            against = (f"{result['verdict']}: {result['mean']:+.3f} "
                       f"[{result['low']:+.3f}, {result['high']:+.3f}]")
            n = str(result["n"])
        lines.append(f"| {row['participant']} | {row['role']} | {row['model']} | "
                     f"{_fmt(row['zero_shot'])} | {base} | {arms} | {_fmt(row['fedmkt'])} | "
                     f"{against} | {n} |")
    if plot_file:
        lines += ["", f"![{metric} per round]({plot_file})"]
    lines += _evaluation_table(summary)
    lines += _selection_table(summary)
    lines += _timing_section(summary)
    lines += work_section(summary.get("work", {}))
    if summary["drops"]:
        lines += ["", "## Dropped participants", ""]
        lines += [f"- round {d['round']}: {d['message']}" for d in summary["drops"]]
    if summary["adapters"]:
        lines += ["", "## Adapters (fetched with FetchAdapter)", "",
                  "| participant | round | sha256 | file |", "|---|---|---|---|"]
        for name, info in summary["adapters"].items():
            lines.append(f"| {name} | {info.get('round')} | `{str(info.get('digest'))[:16]}…` | "
                         f"{info.get('path')} |")
    return "\n".join(lines) + "\n"


def _evaluation_table(summary: dict[str, Any]) -> list[str]:
    metric = summary["metric"]
    rounds = sorted({int(r) for rounds in summary["evaluation"].values() for r in rounds})
    if not rounds:
        return []
    lines = ["", f"## {metric} per round (FedMKT run)", "",
             "| participant | " + " | ".join(f"round {r}" for r in rounds) + " |",
             "|---|" + "---|" * len(rounds)]
    for name, by_round in summary["evaluation"].items():
        cells = [_fmt(by_round.get(str(r), {}).get(metric)) for r in rounds]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _timing_section(summary: dict[str, Any]) -> list[str]:
    over = summary["overhead"]
    lines = ["", "## Where the time goes", ""]
    lines += [f"- start-up of the services (processes, model loading, health checks): "
              f"{over['startup_seconds']:.1f} s; run set-up (tokenizer registration, "
              f"vocabulary maps): {over['setup_seconds']:.1f} s",
              f"- FedMKT run: {over['fedmkt_wall_seconds']:.1f} s"
              + (f"; baseline run: {over['baseline_wall_seconds']:.1f} s"
                 if over["baseline_wall_seconds"] is not None else "")
              + f"; everything: {over['total_seconds']:.1f} s"]
    share = over["total_round_share"]
    if share is not None:
        verdict = "within" if share <= over["target"] else "**above**"
        lines.append(f"- share of round wall time outside model compute (alignment, transfer, "
                     f"orchestration): **{100 * share:.1f} %** over all rounds, {verdict} the "
                     f"{100 * over['target']:.0f} % target")
    if not over["compute_reported"]:
        lines.append("- the participants did not report `compute_seconds`, so their calls' "
                     "wall time counted as compute: the share above is a lower bound")
    if summary["alignment"]["mean_aligned_share"] is not None:
        lines.append(f"- positions whose distribution was projected from the teacher (the rest "
                     f"fell back to a one-hot): "
                     f"{100 * summary['alignment']['mean_aligned_share']:.1f} % on average")
    if summary["rounds_timing"]:
        lines += ["", "| round | wall s | model compute s | outside compute |", "|---|---|---|---|"]
        for row in summary["rounds_timing"]:
            lines.append(f"| {row['round']} | {row.get('wall_seconds', 0):.1f} | "
                         f"{row.get('compute_seconds', 0):.1f} | "
                         f"{100 * row.get('overhead_share', 0):.1f} % |")
    per_step: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for step in summary["steps"]:
        per_step[step["step"]][0] += step["wall_seconds"] or 0.0
        compute = step["compute_seconds"]
        per_step[step["step"]][1] += step["wall_seconds"] if compute is None else compute
    if per_step:
        lines += ["", "| step (summed over participants) | wall s | model compute s |",
                  "|---|---|---|"]
        for name, (wall, compute) in per_step.items():
            lines.append(f"| {name} | {wall:.1f} | {compute:.1f} |")
    return lines


# --------------------------------------------------------------------------- plot


def plot_metrics(summary: dict[str, Any], path: Path) -> Path:
    """One panel per participant: its metric per round, FedMKT vs baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    metric = summary["metric"]
    names = list(summary["participants"])
    cols = min(len(names), 2)
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.6 * rows), squeeze=False)
    for index, name in enumerate(names):
        ax = axes[index // cols][index % cols]
        zero = summary["evaluation"].get(name, {}).get("0", {}).get(metric)
        for label, key, style in (("FedMKT", "evaluation", "-o"),
                                  ("baseline", "baseline_evaluation", "--s")):
            by_round = summary[key].get(name, {})
            points = sorted((int(r), m[metric]) for r, m in by_round.items() if metric in m)
            if points and points[0][0] > 0 and zero is not None:
                points.insert(0, (0, zero))  # both runs start from the same zero-shot model
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], style, label=label)
        role = summary["participants"][name]["role"]
        ax.set_title(f"{name} ({role}, {summary['participants'][name]['model']})", fontsize=9)
        ax.set_xlabel("round (0 = zero-shot)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for index in range(len(names), rows * cols):
        axes[index // cols][index % cols].axis("off")
    fig.suptitle(f"{summary['name']}: {metric} on the held-out split")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(run_dir: Path, summary: dict[str, Any]) -> dict[str, Path]:
    """``metrics.json``, ``metrics.png`` and ``report.md`` in ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = run_dir / "metrics.json"
    metrics.write_text(json.dumps(summary, indent=2, sort_keys=False, default=str) + "\n")
    plot = None
    if summary["evaluation"] or summary["baseline_evaluation"]:
        plot = plot_metrics(summary, run_dir / "metrics.png")
    report = run_dir / "report.md"
    report.write_text(render_markdown(summary, plot.name if plot else None))
    out = {"report": report, "metrics": metrics}
    if plot is not None:
        out["plot"] = plot
    return out
