"""Federation config: validation errors name the bad field; examples load; plans per scenario."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedmkt.config import (
    FederationConfigError,
    Scenario,
    load_federation_config,
    parse_federation_config,
)
from fedmkt.federation import plan as pl
from fedmkt.federation.plan import build_plan

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def base() -> dict:
    return {
        "name": "unit",
        "rounds": 2,
        "task": {"name": "rte", "max_public": 8},
        "participants": [
            {"name": "llm", "role": "server", "model": "tiny-mistral"},
            {"name": "c1", "role": "client", "model": "tiny-gpt2"},
            {"name": "c2", "role": "client", "model": "tiny-neox"},
        ],
    }


def error_of(data: dict) -> str:
    with pytest.raises(FederationConfigError) as info:
        parse_federation_config(yaml.safe_dump(data))
    return str(info.value)


def test_a_valid_config_has_the_paper_defaults() -> None:
    config = parse_federation_config(yaml.safe_dump(base()))
    assert config.server.name == "llm"
    assert [c.name for c in config.clients] == ["c1", "c2"]
    assert config.selection.kd_alpha == 0.9
    assert config.clients[0].lora.r == 8 and config.clients[0].lora.alpha == 16
    assert config.deadlines.seconds("train_local") == config.deadlines.default
    # The YAML dump parses back to the same config (it is what the controller stores).
    assert parse_federation_config(config.to_yaml()) == config


@pytest.mark.parametrize("path, value, field", [
    (("participants", 1, "learning_rate"), -1.0, "participants[1].learning_rate"),
    (("participants", 0, "lora", "r"), 0, "participants[0].lora.r"),
    (("participants", 2, "role"), "boss", "participants[2].role"),
    (("participants", 1, "endpoint"), "localhost", "participants[1].endpoint"),
    (("selection", "kd_alpha"), 1.5, "selection.kd_alpha"),
    (("selection", "strategy"), "best", "selection.strategy"),
    (("knowledge", "top_k"), 0, "knowledge.top_k"),
    (("rounds",), 0, "rounds"),
    (("task", "max_length"), 4096, "task.max_length"),
    (("name",), "has space", "name"),
])
def test_errors_name_the_bad_field(path: tuple, value: object, field: str) -> None:
    data = base()
    target = data
    for key in path[:-1]:
        target = target.setdefault(key, {}) if isinstance(target, dict) else target[key]
    target[path[-1]] = value
    message = error_of(data)
    assert field in message


def test_an_unknown_field_is_named_as_such() -> None:
    data = base()
    data["participants"][1]["learning_rat"] = 0.1
    message = error_of(data)
    assert "participants[1].learning_rat" in message and "unknown field" in message


def test_cross_field_rules() -> None:
    data = base()
    data["participants"][1]["role"] = "server"
    assert "exactly one has role 'server'" in error_of(data)

    data = base()
    data["participants"][2]["name"] = "c1"
    assert "unique" in error_of(data)

    data = base()
    data["quorum"] = {"min_clients": 3}
    assert "quorum.min_clients" in error_of(data)

    data = base()
    data["scenario"] = "one_to_one"
    assert "one_to_one needs exactly one client" in error_of(data)

    data = base()
    data["scenario"] = "homogeneous"
    assert "same model" in error_of(data)

    data = base()
    data["fedavg"] = True
    assert "fedavg" in error_of(data)

    data = base()
    data["task"]["parts"] = 2
    assert "task.parts" in error_of(data)


def test_tls_files_must_exist_relative_to_the_config(tmp_path: Path) -> None:
    data = base()
    data["tls"] = {"ca": "ca.pem", "cert": "me.pem", "key": "me.key"}
    path = tmp_path / "fed.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(FederationConfigError, match="tls.ca"):
        load_federation_config(path)
    for name in ("ca.pem", "me.pem", "me.key"):
        (tmp_path / name).write_text("PEM")
    config = load_federation_config(path)
    assert config.tls is not None and config.tls.ca == (tmp_path / "ca.pem").resolve()
    data["tls"] = {"ca": "ca.pem", "cert": "me.pem"}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(FederationConfigError, match="cert and key"):
        load_federation_config(path)


def test_not_yaml_and_not_a_mapping() -> None:
    with pytest.raises(FederationConfigError, match="not valid YAML"):
        parse_federation_config("a: [1, 2")
    with pytest.raises(FederationConfigError, match="mapping"):
        parse_federation_config("- 1\n- 2\n")


@pytest.mark.parametrize("name", ["demo", "heterogeneous", "homogeneous", "one_to_one",
                                  "llm_to_slm", "real-pair"])
def test_every_example_loads(name: str) -> None:
    config = load_federation_config(EXAMPLES / f"{name}.yaml")
    assert config.rounds >= 1 and config.clients


def test_the_default_demo_is_a_federation_of_three_real_models() -> None:
    config = load_federation_config(EXAMPLES / "demo.yaml")
    assert config.scenario == Scenario.HETEROGENEOUS
    assert config.server.model == "qwen2.5-coder-0.5b"
    assert sorted(c.model for c in config.clients) == ["gemma3-270m", "smollm2-135m"]
    assert config.task.max_eval >= 200  # enough held-out samples for the paired intervals


def test_the_tiny_example_is_the_plumbing_scenario() -> None:
    config = load_federation_config(EXAMPLES / "heterogeneous.yaml")
    assert config.scenario == Scenario.HETEROGENEOUS
    assert config.server.model == "smollm2-135m"
    assert sorted(c.model for c in config.clients) == ["tiny-gpt2", "tiny-mistral", "tiny-neox"]
    assert config.task.name in ("rte", "boolq") and config.rounds >= 3
    real = load_federation_config(EXAMPLES / "real-pair.yaml")
    assert real.server.model == "gemma3-270m" and [c.model for c in real.clients] == [
        "smollm2-135m"]


def _steps(plan: pl.Plan, round_index: int) -> list[tuple[str, str]]:
    return [(s.name, s.participant) for p in plan.phases_of(round_index) for s in p.steps]


def test_full_plan_follows_the_round_table() -> None:
    config = parse_federation_config(yaml.safe_dump(base()))
    plan = build_plan(config)
    assert _steps(plan, 0) == [("evaluate", "llm"), ("evaluate", "c1"), ("evaluate", "c2")]
    assert [p.name for p in plan.phases_of(1)] == [
        "client_update", "server_distill", "server_knowledge", "client_distill", "evaluate"]
    assert _steps(plan, 1)[:5] == [
        ("train_local", "c1"), ("client_knowledge", "c1"),
        ("train_local", "c2"), ("client_knowledge", "c2"), ("distill", "llm")]
    assert plan.phases_of(1)[2].fan_out
    assert len({s.key for s in plan.steps}) == len(plan.steps)  # keys identify steps


def test_baseline_plan_has_no_transfer() -> None:
    data = base()
    data["transfer"] = False
    data["zero_shot"] = False
    plan = build_plan(parse_federation_config(yaml.safe_dump(data)))
    names = {s.name for s in plan.steps}
    assert names == {"train_local", "distill", "evaluate"}
    assert not plan.phases_of(0)
    assert _steps(plan, 1) == [("train_local", "c1"), ("train_local", "c2"), ("distill", "llm"),
                               ("evaluate", "llm"), ("evaluate", "c1"), ("evaluate", "c2")]


def test_ablation_plan_gives_clients_public_ce_and_only_baselines_have_it() -> None:
    data = {**base(), "transfer": False, "zero_shot": False, "client_public_ce": True}
    plan = build_plan(parse_federation_config(yaml.safe_dump(data)))
    assert {s.name for s in plan.steps} == {"train_local", "distill", "evaluate"}
    assert _steps(plan, 1) == [("train_local", "c1"), ("train_local", "c2"), ("distill", "llm"),
                               ("distill", "c1"), ("distill", "c2"),
                               ("evaluate", "llm"), ("evaluate", "c1"), ("evaluate", "c2")]
    with pytest.raises(FederationConfigError, match="client_public_ce"):
        parse_federation_config(yaml.safe_dump({**base(), "client_public_ce": True}))


def test_fedavg_baseline_plan_averages_after_local_training() -> None:
    data = {**base(), "scenario": "homogeneous", "fedavg": True, "transfer": False,
            "zero_shot": False}
    for p in data["participants"][1:]:
        p["model"] = "tiny-gpt2"
    plan = build_plan(parse_federation_config(yaml.safe_dump(data)))
    assert [p.name for p in plan.phases_of(1)] == [
        "client_update", "server_distill", "fedavg", "evaluate"]
    assert not any(s.name.endswith("_knowledge") for s in plan.steps)


def test_llm_to_slm_never_trains_the_llm_and_homogeneous_averages() -> None:
    data = base()
    data["scenario"] = "llm_to_slm"
    plan = build_plan(parse_federation_config(yaml.safe_dump(data)))
    assert ("distill", "llm") not in _steps(plan, 1)
    assert not any(s.name == "client_knowledge" for s in plan.steps)
    assert ("evaluate", "llm") in _steps(plan, 0) and ("evaluate", "llm") not in _steps(plan, 2)

    data = base()
    data["scenario"] = "homogeneous"
    data["fedavg"] = True
    for p in data["participants"][1:]:
        p["model"] = "tiny-gpt2"
    plan = build_plan(parse_federation_config(yaml.safe_dump(data)))
    names = [p.name for p in plan.phases_of(1)]
    assert names.index("fedavg") == names.index("client_distill") + 1
