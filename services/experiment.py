"""``fedmkt experiment SPEC``: run every federation of an experiment, then write its results.

Each entry (a study with one seed, ``fedmkt.federation.experiment``) runs as ``fedmkt run``
does (``EmbeddedRun``: FedMKT, baseline and ablation runs) under ``<runs-dir>/<run-id>/``. An
entry whose three runs have succeeded is not run again: its ``metrics.json`` is read. An
interrupted experiment therefore resumes with the next unfinished entry (and that entry from its
last completed step). When every entry has finished, the results document is written (to a
temporary name, then renamed).
"""

from __future__ import annotations

import json
import logging
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from fedmkt.federation.experiment import Entry, load_experiment, render_results

log = logging.getLogger("fedmkt.experiment")


def finished_summary(run_dir: Path, *, fedavg: bool = False) -> dict[str, Any] | None:
    """The summary of an entry whose FedMKT, baseline and ablation runs (and FedAvg run, for a
    federation with ``fedavg``) all succeeded."""
    try:
        summary = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    states = [summary.get("state"), summary.get("baseline_state"), summary.get("ablation_state")]
    if fedavg:
        states.append(summary.get("fedavg_state"))
    return summary if all(s == "succeeded" for s in states) else None


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}"


def run_experiment(spec_path: Path, runs_dir: Path, out: Path, *, command: str,
                   run_entry: Callable[[Entry, Path, Path], dict[str, Any]] | None = None,
                   say: Callable[[str], None] = print) -> Path:
    """Run every unfinished entry, then write ``out``; returns ``out``."""
    spec, entries = load_experiment(spec_path)
    run_entry = run_entry or _embedded_run
    configs = runs_dir / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, dict[str, Any]] = {}
    for index, entry in enumerate(entries, 1):
        head = f"[{index}/{len(entries)}] {entry.run_id}"
        done = finished_summary(runs_dir / entry.run_id, fedavg=entry.config.fedavg)
        if done is not None:
            say(f"{head}: finished earlier, {done['overhead']['total_seconds'] / 60:.1f} min")
            summaries[entry.run_id] = done
            continue
        config_path = configs / f"{entry.run_id}.yaml"
        config_path.write_text(entry.config.to_yaml(), encoding="utf-8")
        say(f"{head}: running ({entry.study.name}, seed {entry.seed})")
        summary = run_entry(entry, config_path, runs_dir)
        if finished_summary(runs_dir / entry.run_id, fedavg=entry.config.fedavg) is None:
            raise RuntimeError(f"{entry.run_id} did not finish all its runs (see "
                               f"{runs_dir / entry.run_id / 'report.md'}); run the same "
                               "command again to resume it")
        summaries[entry.run_id] = summary
        say(f"{head}: done in {summary['overhead']['total_seconds'] / 60:.1f} min")
    total = sum(s["overhead"]["total_seconds"] for s in summaries.values())
    text = render_results(spec, entries, summaries, command=command, total_seconds=total,
                          machine=_machine())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return out


def _embedded_run(entry: Entry, config_path: Path, runs_dir: Path) -> dict[str, Any]:
    from services.embedded import EmbeddedRun

    return EmbeddedRun(config_path, runs_dir=runs_dir, run_id=entry.run_id).run()


def dump_entries(spec_path: Path) -> str:
    """The entries of an experiment as YAML (``--plan``: what would run)."""
    spec, entries = load_experiment(spec_path)
    return yaml.safe_dump({"experiment": spec.name, "runs": [
        {"run_id": e.run_id, "study": e.study.name, "seed": e.seed,
         "scenario": str(e.config.scenario), "rounds": e.config.rounds,
         "participants": [f"{p.name}: {p.model}" for p in e.config.participants]}
        for e in entries]}, sort_keys=False)
