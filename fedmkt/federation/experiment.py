"""An experiment: several federations (studies × partition seeds) and the results document.

An experiment file (YAML, validated) names studies; each study is a federation config run with
one or more partition seeds::

    name: paper-shape
    studies:
      - name: heterogeneous
        title: "Heterogeneous: Qwen2.5-Coder-0.5B with SmolLM2-135M and Gemma-3-270M"
        config: ../examples/demo.yaml
        seeds: [42, 7]
      - name: one-to-one
        config: one_to_one.yaml
        overrides: {rounds: 1}

Every (study, seed) is one ``fedmkt run`` (FedMKT, baseline and ablation runs, and a FedAvg run
for a federation with ``fedavg``) with the run id
``<experiment>-<study>-s<seed>``, so an interrupted experiment resumes where it stopped and
finished entries are not run again. ``render_results`` turns the runs' summaries into the
results document: per study and model the zero-shot, baseline, ablation and FedMKT numbers per
seed, and FedMKT's difference from each baseline pooled over the seeds with a paired bootstrap
interval (the samples of every seed, each compared with itself) and the verdict that interval
gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fedmkt.config import FederationConfig, FederationConfigError, parse_federation_config
from fedmkt.data.outcomes import SampleOutcomes
from fedmkt.federation.verdicts import compare, emphasised

_NAME = r"^[a-z0-9][a-z0-9-]{0,40}$"


class StudySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME)
    title: str = ""
    config: Path
    seeds: list[int] = Field(default_factory=lambda: [42], min_length=1)
    overrides: dict[str, Any] = Field(default_factory=dict)

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
            raise ValueError("seeds must be distinct non-negative integers")
        return seeds


class ExperimentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME)
    description: str = ""
    studies: list[StudySpec] = Field(min_length=1)


class ExperimentError(ValueError):
    """An experiment file that cannot be run; the message names the file and the field."""


@dataclass(frozen=True)
class Entry:
    """One federation of the experiment: a study with one seed."""

    study: StudySpec
    seed: int
    run_id: str
    config: FederationConfig


def load_experiment(path: Path) -> tuple[ExperimentSpec, list[Entry]]:
    """The experiment in ``path`` and its entries, every federation config checked."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        spec = ExperimentSpec.model_validate(data)
    except (OSError, yaml.YAMLError) as exc:
        raise ExperimentError(f"{path}: {exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ExperimentError(f"{path}: {where}: {first['msg']}") from exc
    names = [s.name for s in spec.studies]
    if len(set(names)) != len(names):
        raise ExperimentError(f"{path}: studies: names must be unique")
    entries = []
    for study in spec.studies:
        config_path = study.config if study.config.is_absolute() else path.parent / study.config
        try:
            base = yaml.safe_load(config_path.read_text(encoding="utf-8"))
            if not isinstance(base, dict):
                raise ExperimentError(f"{config_path}: must hold a mapping")
            for seed in study.seeds:
                data = {**base, **study.overrides, "seed": seed}
                config = parse_federation_config(yaml.safe_dump(data), base_dir=config_path.parent,
                                                 source=str(config_path))
                entries.append(Entry(study, seed, f"{spec.name}-{study.name}-s{seed}", config))
        except (OSError, yaml.YAMLError, FederationConfigError) as exc:
            raise ExperimentError(f"study {study.name}: {exc}") from exc
    return spec, entries


# --------------------------------------------------------------------------- pooled statistics

ARMS = (("baseline", "baseline"), ("ablation", "private + public CE, no KD"),
        ("fedavg", "FedAvg"), ("zero_shot", "zero-shot"))


def _last(rounds: dict[str, Any], positive: bool = True) -> SampleOutcomes | None:
    usable = sorted((int(r) for r in rounds if int(r) > 0) if positive else
                    (int(r) for r in rounds if int(r) == 0))
    return SampleOutcomes.from_json(rounds[str(usable[-1])]) if usable else None


def arm_outcomes(summary: dict[str, Any], participant: str, arm: str) -> SampleOutcomes | None:
    """The per-sample outcomes of ``participant``'s final evaluation in ``arm`` of a run
    (``fedmkt``, ``baseline``, ``ablation``; ``zero_shot``: the FedMKT run's round 0)."""
    per_run = summary.get("sample_outcomes", {})
    if arm == "zero_shot":
        return _last(per_run.get("fedmkt", {}).get(participant, {}), positive=False)
    rounds = per_run.get(arm, {}).get(participant, {})
    outcomes = _last(rounds)
    if outcomes is None and arm != "fedmkt":  # an arm that only evaluated in round 0
        outcomes = _last(rounds, positive=False)
    return outcomes


def pooled_difference(summaries: Sequence[dict[str, Any]], participant: str, arm: str,
                      metric: str) -> dict[str, Any]:
    """FedMKT minus ``arm`` for ``participant`` over every run's samples together (each sample
    paired with itself in its own run): the paired bootstrap and its verdict."""
    pooled: dict[str, list[SampleOutcomes]] = {"fedmkt": [], arm: []}
    for summary in summaries:
        for which in pooled:
            outcomes = arm_outcomes(summary, participant, which)
            if outcomes is None:
                return {"verdict": None, "reason": f"no per-sample {which} results in "
                                                   f"{summary.get('run_id')}"}
            pooled[which].append(_prefixed(outcomes, str(summary.get("run_id"))))
    return compare(_joined(pooled["fedmkt"]), _joined(pooled[arm]), metric)


def _prefixed(outcomes: SampleOutcomes, run_id: str) -> SampleOutcomes:
    """The same outcomes with sample ids ``<run>/<id>``: samples of different runs stay apart."""
    return SampleOutcomes(tuple(f"{run_id}/{i}" for i in outcomes.sample_ids), outcomes.values)


def _joined(parts: Sequence[SampleOutcomes]) -> SampleOutcomes:
    """One set of outcomes from several (their metrics in common)."""
    metrics = set.intersection(*(set(p.values) for p in parts))
    return SampleOutcomes(tuple(i for p in parts for i in p.sample_ids),
                          {m: tuple(v for p in parts for v in p.values[m]) for m in metrics})


# --------------------------------------------------------------------------- the document


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _interval(result: dict[str, Any]) -> str:
    if result.get("verdict") is None:
        return f"no verdict ({result.get('reason', 'not compared')})"
    return (f"{result['mean']:+.3f} [{result['low']:+.3f}, {result['high']:+.3f}] "
            f"(n = {result['n']}): {emphasised(result['verdict'])}")


def study_section(entries: Sequence[Entry], summaries: Sequence[dict[str, Any]]) -> list[str]:
    """The tables of one study: numbers per seed, then FedMKT's pooled differences."""
    study = entries[0].study
    metric = summaries[0]["metric"]
    config = entries[0].config
    lines = [f"## {study.title or study.name}", ""]
    lines += [f"Scenario {config.scenario}, task {config.task.name}, {config.rounds} round(s); "
              f"seeds {', '.join(str(e.seed) for e in entries)}; held-out {metric}. Runs: "
              + ", ".join(f"`{e.run_id}`" for e in entries) + ".", ""]
    fedavg = all(s.get("fedavg_run_id") for s in summaries)
    arms = [(arm, what) for arm, what in ARMS if arm != "fedavg" or fedavg]
    lines += ["| model | role | seed | zero-shot | baseline | private + public CE, no KD | "
              + ("FedAvg | " if fedavg else "") + "FedMKT |",
              "|---|---|---|---|---|---|" + ("---|" if fedavg else "") + "---|"]
    for entry, summary in zip(entries, summaries, strict=True):
        for row in summary["comparison"]:
            server = row["role"] == "server"
            extra = ["= baseline" if server else _fmt(row.get("ablation"))]
            if fedavg:
                extra.append("= baseline" if server else _fmt(row.get("fedavg")))
            lines.append(f"| {row['participant']} ({row['model']}) | {row['role']} | "
                         f"{entry.seed} | {_fmt(row['zero_shot'])} | {_fmt(row['baseline'])} "
                         f"({row['baseline_kind']}) | " + " | ".join(extra)
                         + f" | {_fmt(row['fedmkt'])} |")
    lines += ["", "FedMKT minus each baseline, all seeds' held-out samples pooled (95 % paired "
              "bootstrap); the verdict comes from the interval:", "",
              "| model | " + " | ".join(f"vs {what}" for _, what in arms) + " |",
              "|---|" + "---|" * len(arms)]
    for row in summaries[0]["comparison"]:
        name = row["participant"]
        if row.get("note"):
            lines.append(f"| {name} | {row['note']} |" + " |" * (len(arms) - 1))
            continue
        cells = []
        for arm, _ in arms:
            if arm in ("ablation", "fedavg") and row["role"] == "server":
                cells.append("= vs baseline")
                continue
            cells.append(_interval(pooled_difference(summaries, name, arm, metric)))
        lines.append(f"| {name} ({row['model']}) | " + " | ".join(cells) + " |")
    lines += ["", "Diagnostics (FedMKT runs): per round and student, the share of public samples "
              "distilled, which teachers won them, the share of positions projected across "
              "tokenizers, and the losses.", "",
              "| seed | round | student | distilled | teachers chosen | positions projected | "
              "CE | KD |", "|---|---|---|---|---|---|---|---|"]
    for entry, summary in zip(entries, summaries, strict=True):
        for sel in summary.get("selection", []):
            fraction, share = sel.get("distilled_fraction"), sel.get("projected_share")
            chosen = ", ".join(f"{n} ×{c}" for n, c in sel["selected"].items() if c) or "none"
            lines.append(f"| {entry.seed} | {sel['round']} | {sel['participant']} | "
                         f"{'—' if fraction is None else f'{fraction:.0%}'} | {chosen} | "
                         f"{'—' if share is None else f'{share:.0%}'} | {_fmt(sel.get('ce'))} | "
                         f"{_fmt(sel.get('kd'))} |")
    lines += ["", "| seed | FedMKT run s | baseline run s | ablation run s | everything s |",
              "|---|---|---|---|---|"]
    for entry, summary in zip(entries, summaries, strict=True):
        over = summary["overhead"]
        lines.append(f"| {entry.seed} | {over['fedmkt_wall_seconds']:.0f} | "
                     f"{(over.get('baseline_wall_seconds') or 0):.0f} | "
                     f"{(over.get('ablation_wall_seconds') or 0):.0f} | "
                     f"{over['total_seconds']:.0f} |")
    return lines


def render_results(spec: ExperimentSpec, entries: Sequence[Entry],
                   summaries: dict[str, dict[str, Any]], *, command: str,
                   total_seconds: float, machine: str) -> str:
    """The results document of a finished experiment (``summaries`` by run id)."""
    lines = [f"# Results: experiment `{spec.name}`", ""]
    if spec.description:
        lines += [spec.description.strip(), ""]
    lines += [f"Written by `{command}` from the runs it made; every number below was measured "
              f"in those runs. Machine: {machine}. Time for the runs summarised here: "
              f"{total_seconds / 60:.1f} min (runs done in earlier sittings count with their "
              f"own time).", ""]
    for study in spec.studies:
        mine = [e for e in entries if e.study.name == study.name]
        lines += study_section(mine, [summaries[e.run_id] for e in mine])
        lines.append("")
    lines += ["## How to reproduce", "", "```bash", command, "```", "",
              "Each federation is a `fedmkt run` with the run id shown; an interrupted "
              "experiment resumes where it stopped when the same command is run again.", ""]
    return "\n".join(lines)
