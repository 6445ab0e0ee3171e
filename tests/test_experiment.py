"""Experiments: the spec file, resuming by run id, and the results document's pooled intervals."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedmkt.federation.experiment import ExperimentError, load_experiment, pooled_difference
from fedmkt.federation.fakes import fake_federation
from fedmkt.federation.manager import RunManager
from fedmkt.federation.report import RunOutcome, summarize, write_report
from fedmkt.federation.store import RunStore
from services.experiment import finished_summary, run_experiment

FEDERATION = {"name": "exp-fed", "rounds": 1, "task": {"name": "rte"},
              "participants": [{"name": "llm", "role": "server", "model": "m"},
                               {"name": "c1", "role": "client", "model": "s"}]}


def _spec(tmp_path: Path, **study) -> Path:
    (tmp_path / "fed.yaml").write_text(yaml.safe_dump(FEDERATION))
    spec = {"name": "exp", "studies": [{"name": "pair", "config": "fed.yaml", "seeds": [1, 2],
                                        **study}]}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_entries_are_studies_times_seeds_with_stable_run_ids(tmp_path: Path) -> None:
    spec, entries = load_experiment(_spec(tmp_path, overrides={"rounds": 2}))
    assert [(e.run_id, e.seed, e.config.rounds) for e in entries] == [
        ("exp-pair-s1", 1, 2), ("exp-pair-s2", 2, 2)]
    for bad, match in (({"seeds": [1, 1]}, "distinct"), ({"colour": "red"}, "colour"),
                       ({"overrides": {"rounds": 0}}, "rounds")):
        with pytest.raises(ExperimentError, match=match):
            load_experiment(_spec(tmp_path, **bad))


def _fake_entry(calls: list[str]):
    """Runs an entry's three runs against fake participants and writes its report."""

    def run(entry, config_path: Path, runs_dir: Path) -> dict:
        calls.append(entry.run_id)
        config = entry.config
        store = RunStore(runs_dir / f"{entry.run_id}.db")
        outcomes = []
        for suffix, cfg in (("", config),
                            ("-baseline", config.model_copy(update={"transfer": False,
                                                                     "zero_shot": False})),
                            ("-ablation", config.model_copy(update={
                                "transfer": False, "zero_shot": False,
                                "client_public_ce": True}))):
            fakes = fake_federation(cfg)
            manager = RunManager(store, lambda c, f=fakes: f.connections())
            run_id = entry.run_id + suffix
            manager.start(cfg.to_yaml(), run_id)
            record = manager.wait(run_id, 60)
            outcomes.append(RunOutcome(run_id, record.state, record.error,
                                       store.events(run_id, limit=100_000), 1.0))
        summary = summarize(config, outcomes[0], outcomes[1], ablation=outcomes[2],
                            total_seconds=60.0)
        write_report(runs_dir / entry.run_id, summary)
        return summary

    return run


def test_an_experiment_runs_each_entry_once_and_pools_the_seeds(tmp_path: Path) -> None:
    spec = _spec(tmp_path, overrides={"rounds": 2})
    runs, out, calls = tmp_path / "runs", tmp_path / "docs" / "results.md", []
    run_experiment(spec, runs, out, command="fedmkt experiment exp.yaml", say=lambda _: None,
                   run_entry=_fake_entry(calls))
    assert calls == ["exp-pair-s1", "exp-pair-s2"]
    text = out.read_text()
    # fake c1 after two rounds: 12 of 20 right in the baseline (private only), 14 in FedMKT:
    # pooled over the two seeds, 4 discordant samples of 40, each +1 (one seed alone: no verdict)
    summaries = [finished_summary(runs / r) for r in calls]
    pooled = pooled_difference(summaries, "c1", "baseline", "accuracy")
    assert pooled["n"] == 40 and pooled["mean"] == pytest.approx(0.1)
    assert pooled["verdict"] == "helped" and pooled["low"] > 0
    assert "| c1 (s) | +0.100 [" in text and "(n = 40): **helped**" in text
    assert "## How to reproduce" in text and "fedmkt experiment exp.yaml" in text
    # run again: nothing is rerun, the document is written again from the saved summaries
    out.unlink()
    run_experiment(spec, runs, out, command="x", say=lambda _: None,
                   run_entry=_fake_entry(calls))
    assert calls == ["exp-pair-s1", "exp-pair-s2"] and out.is_file()
    # an entry whose ablation did not succeed is run again (resumed)
    metrics = runs / "exp-pair-s2" / "metrics.json"
    metrics.write_text(metrics.read_text().replace('"ablation_state": "succeeded"',
                                                   '"ablation_state": "failed"'))
    run_experiment(spec, runs, out, command="x", say=lambda _: None,
                   run_entry=_fake_entry(calls))
    assert calls[-1] == "exp-pair-s2" and len(calls) == 3
