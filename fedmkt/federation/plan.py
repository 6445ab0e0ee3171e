"""The round plan (DESIGN §1) as data: rounds of phases, phases of parallel lanes of steps.

One round of the full plan::

    phase            lanes (run in parallel)                     DESIGN §1 steps
    client_update    per client: train_local → client_knowledge  1, 2+3 (client → aligner → LLM)
    server_distill   server: distill                             4
    server_knowledge per client: server_knowledge (one source    5+6 (LLM → aligner → client)
                     stream from the LLM, fanned out)
    client_distill   per client: distill                         7
    fedavg           (homogeneous + fedavg only)                 —
    evaluate         every participant: evaluate                 8

Round 0 holds a single ``evaluate`` phase: the zero-shot numbers. The **LLM→SLM only** scenario
drops ``client_knowledge`` and ``server_distill``; a **baseline** plan (knowledge transfer off)
keeps only ``train_local``, the server's ``distill`` (no teacher staged: CE on public data) and
``evaluate``; the **ablation** plan (``client_public_ce``) also gives the clients their ``distill``
step, CE on the public data without knowledge; the **FedAvg baseline** (``fedavg`` without transfer)
averages the clients' adapters after their local training. A step is identified by ``(round, name,
participant)``; that key is what the run store records as done, so a resumed run skips exactly the
completed steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedmkt.config import FederationConfig, Scenario

TRAIN_LOCAL = "train_local"
CLIENT_KNOWLEDGE = "client_knowledge"
DISTILL = "distill"
SERVER_KNOWLEDGE = "server_knowledge"
FEDAVG = "fedavg"
EVALUATE = "evaluate"
ROUND_DONE = "round_done"

STEP_NAMES = (TRAIN_LOCAL, CLIENT_KNOWLEDGE, DISTILL, SERVER_KNOWLEDGE, FEDAVG, EVALUATE)


@dataclass(frozen=True, order=True)
class Step:
    """One unit of work the store records: ``participant`` is "" for run-wide steps."""

    round: int
    name: str
    participant: str = ""

    @property
    def key(self) -> str:
        return f"r{self.round}/{self.name}/{self.participant or '-'}"


@dataclass(frozen=True)
class Lane:
    """Steps of one participant in one phase, run in order."""

    participant: str
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class Phase:
    """Lanes that run in parallel. ``fan_out``: the lanes share one knowledge source stream
    (the server's), read once and fed to every lane's aligner → destination pipe."""

    round: int
    name: str
    lanes: tuple[Lane, ...]
    fan_out: bool = False

    @property
    def steps(self) -> list[Step]:
        return [step for lane in self.lanes for step in lane.steps]


@dataclass(frozen=True)
class Plan:
    rounds: int
    phases: tuple[Phase, ...]
    transfer: bool  # knowledge transfer on (FedMKT) or off (baseline)

    def phases_of(self, round_index: int) -> list[Phase]:
        return [p for p in self.phases if p.round == round_index]

    @property
    def steps(self) -> list[Step]:
        return [step for phase in self.phases for step in phase.steps]


def _lanes(participants: list[str], round_index: int, *names: str) -> tuple[Lane, ...]:
    return tuple(
        Lane(p, tuple(Step(round_index, name, p) for name in names)) for p in participants
    )


def build_plan(config: FederationConfig, *, transfer: bool | None = None,
               zero_shot: bool | None = None) -> Plan:
    """The plan of a run of ``config``: FedMKT (``transfer``) or the baseline without transfer.

    ``zero_shot`` adds round 0 (evaluate every participant before any training). Both default
    to the config's own ``transfer`` / ``zero_shot`` settings.
    """
    transfer = config.transfer if transfer is None else transfer
    zero_shot = config.zero_shot if zero_shot is None else zero_shot
    server = config.server.name
    clients = [c.name for c in config.clients]
    everyone = [server, *clients]
    server_trains = config.scenario != Scenario.LLM_TO_SLM
    phases: list[Phase] = []
    if zero_shot:
        phases.append(Phase(0, EVALUATE, _lanes(everyone, 0, EVALUATE)))
    for r in range(1, config.rounds + 1):
        if transfer and server_trains:
            phases.append(Phase(r, "client_update",
                                _lanes(clients, r, TRAIN_LOCAL, CLIENT_KNOWLEDGE)))
        else:
            phases.append(Phase(r, "client_update", _lanes(clients, r, TRAIN_LOCAL)))
        if server_trains:
            phases.append(Phase(r, "server_distill", _lanes([server], r, DISTILL)))
        if transfer:
            phases.append(Phase(r, SERVER_KNOWLEDGE, _lanes(clients, r, SERVER_KNOWLEDGE),
                                fan_out=True))
            phases.append(Phase(r, "client_distill", _lanes(clients, r, DISTILL)))
            if config.fedavg:
                phases.append(Phase(r, FEDAVG, (Lane("", (Step(r, FEDAVG),)),)))
        else:
            if config.client_public_ce:  # the ablation: public CE instead of distillation
                phases.append(Phase(r, "client_distill", _lanes(clients, r, DISTILL)))
            if config.fedavg:  # the FedAvg baseline: the clients' adapters averaged, no LLM
                phases.append(Phase(r, FEDAVG, (Lane("", (Step(r, FEDAVG),)),)))
        # An LLM that is never trained is evaluated once (round 0, else round 1).
        evaluated = everyone if server_trains or (r == 1 and not zero_shot) else clients
        phases.append(Phase(r, EVALUATE, _lanes(evaluated, r, EVALUATE)))
    return Plan(config.rounds, tuple(phases), transfer)
