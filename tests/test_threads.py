"""The embedded run's default division of CPU threads among participants."""

from __future__ import annotations

from pathlib import Path

from fedmkt.config import load_federation_config
from fedmkt.federation.threads import available_cores, thread_env, thread_plan

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_server_gets_every_core_and_clients_share_them() -> None:
    config = load_federation_config(EXAMPLES / "heterogeneous.yaml")
    unset = config.model_copy(update={"participants": [
        p.model_copy(update={"threads": None}) for p in config.participants]})
    plan = thread_plan(unset, cores=8)
    assert plan[unset.server.name] == 8
    assert {plan[c.name] for c in unset.clients} == {8 // len(unset.clients)}
    assert set(thread_plan(unset, cores=2).values()) <= {1, 2}
    assert min(thread_plan(unset, cores=1).values()) == 1


def test_a_participants_own_setting_wins() -> None:
    config = load_federation_config(EXAMPLES / "heterogeneous.yaml")
    plan = thread_plan(config, cores=64)
    assert plan == {p.name: p.threads for p in config.participants}


def test_environment_and_cores() -> None:
    assert thread_env(3) == {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3"}
    assert available_cores() >= 1
