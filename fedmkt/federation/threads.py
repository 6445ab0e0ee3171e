"""How many CPU threads each participant of an embedded run gets (DESIGN §11).

On one machine every participant is a process, and the round plan runs the clients' steps in
parallel lanes while the server's distillation runs alone. Left to itself, every process would
start one thread per core, and parallel lanes would then run ``clients × cores`` threads on
``cores`` cores: OpenMP threads that wait on each other slow every process down, so that the
lanes together take longer than running them one after another. The default division instead
gives the server every core (its heavy steps run alone) and splits the cores among the clients
(whose heavy steps run together); a participant's own ``threads`` setting wins.
"""

from __future__ import annotations

import os

from fedmkt.config import FederationConfig


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def thread_plan(config: FederationConfig, cores: int | None = None) -> dict[str, int]:
    """Threads per participant name: its ``threads`` if set, else the server all ``cores``
    and each client ``cores // clients`` (at least 1)."""
    cores = available_cores() if cores is None else max(1, cores)
    clients = max(1, len(config.clients))
    plan = {}
    for spec in config.participants:
        if spec.threads:
            plan[spec.name] = spec.threads
        elif spec.role == "server":
            plan[spec.name] = cores
        else:
            plan[spec.name] = max(1, cores // clients)
    return plan


def thread_env(threads: int) -> dict[str, str]:
    """Environment that makes torch (OpenMP, MKL) use ``threads`` threads in a new process."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
