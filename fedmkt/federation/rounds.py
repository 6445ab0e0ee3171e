"""Execution of a round plan against participants and an aligner (DESIGN §1, §9).

``RunExecutor.execute()`` walks the plan phase by phase. Lanes of a phase run in parallel
threads (at most ``max_parallel`` at once); the steps of a lane run in order. Every completed
step is written to the store (with wall and compute seconds, metrics, artefact digests) before
the next one starts, and a resumed run skips every step the store holds, so a crash loses at
most the steps that were in flight. Each call carries the step's deadline: a client that misses
it (or cannot be reached) is dropped from the rest of that round, with an event saying so, as
long as ``quorum.min_clients`` clients remain; otherwise the run fails. While the server or the
aligner is unreachable (a restart) a step, the server's knowledge fan-out included, is tried
again with backoff for ``deadlines.retry_unavailable`` seconds; any other failure of the server
or the aligner fails the run.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fedmkt.config import FederationConfig
from fedmkt.data.outcomes import SampleOutcomes
from fedmkt.federation import events as ev
from fedmkt.federation import plan as pl
from fedmkt.federation.errors import (
    DROPPABLE,
    CallCancelled,
    CallFailed,
    QuorumLost,
    RunCancelled,
    RunFailed,
    Unreachable,
)
from fedmkt.federation.events import Event, EventHub
from fedmkt.federation.interfaces import (
    CallOptions,
    CancelScope,
    Connections,
    ParticipantDescription,
    ProgressUpdate,
    finite_metrics,
)
from fedmkt.federation.pipe import AlignSettings, Destination, FanOutResult, fan_out
from fedmkt.federation.store import RunStore, StepRecord

log = logging.getLogger("fedmkt.controller")

GRACE_SECONDS = 10.0  # past a deadline, how long a lane may take to notice before cancelling


@dataclass
class StepOutcome:
    """What one step produced (before it is recorded)."""

    metrics: dict[str, float] = field(default_factory=dict)
    artefacts: dict[str, object] = field(default_factory=dict)
    compute_seconds: float | None = None
    outcomes: SampleOutcomes | None = None  # an evaluation's per-sample results


@dataclass
class LaneOutcome:
    participant: str
    compute: float = 0.0
    error: BaseException | None = None


@dataclass
class RoundClock:
    """Wall and model-compute seconds of the phases run in this process for one round."""

    wall: float = 0.0
    compute: float = 0.0
    phases: dict[str, dict[str, float]] = field(default_factory=dict)


class RunExecutor:
    """Runs the plan of one run to its end; raises ``RunFailed`` or ``RunCancelled``."""

    def __init__(self, *, run_id: str, config: FederationConfig, plan: pl.Plan, store: RunStore,
                 hub: EventHub, connections: Connections, scope: CancelScope) -> None:
        self.run_id = run_id
        self.config = config
        self.plan = plan
        self.store = store
        self.hub = hub
        self.clients = connections.participants
        self.aligner = connections.aligner
        self.scope = scope
        self.described: dict[str, ParticipantDescription] = {}
        self.done: dict[pl.Step, StepRecord] = {}
        self._client_names = {c.name for c in config.clients}
        self.align = AlignSettings(top_k=config.knowledge.top_k,
                                   logit_dtype=config.knowledge.logit_dtype,
                                   canonical=config.alignment.canonical,
                                   method=config.alignment.method)

    # ------------------------------------------------------------------ whole run
    def execute(self) -> None:
        self.done = self.store.completed_steps(self.run_id)
        self._describe_all()
        if self.plan.transfer:
            self._register_tokenizers()
            self._prepare_vocab_maps()
        rounds = sorted({phase.round for phase in self.plan.phases})
        for round_index in rounds:
            self._check_cancel()
            marker = pl.Step(round_index, pl.ROUND_DONE)
            if marker in self.done:
                continue
            self._second_chance(round_index)
            clock = RoundClock()
            for phase in self.plan.phases_of(round_index):
                self._run_phase(phase, clock)
            self._finish_round(round_index, clock)

    def _check_cancel(self) -> None:
        if self.scope.cancelled:
            raise RunCancelled(self.scope.reason or "cancelled")

    def _emit(self, kind: str, **fields) -> Event | None:
        return self.hub.publish(Event(run_id=self.run_id, kind=kind, **fields))

    # ------------------------------------------------------------------ set-up
    def _describe_all(self) -> None:
        """Describe every participant (in parallel); check roles and shared public data."""
        names = [p.name for p in self.config.participants]
        seconds = self.config.deadlines.describe

        def describe(name: str) -> ParticipantDescription:
            return self.clients[name].describe(CallOptions.within(name, seconds, self.scope))

        with ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="describe") as pool:
            futures = {name: pool.submit(describe, name) for name in names}
            for name, future in futures.items():
                try:
                    self.described[name] = future.result()
                except CallFailed as exc:
                    self._check_cancel()
                    raise RunFailed(f"cannot reach participant {name} at start: {exc}") from exc
        for spec in self.config.participants:
            got = self.described[spec.name]
            if got.role != spec.role:
                raise RunFailed(f"participant {spec.name} serves role {got.role!r} but the config "
                                f"says {spec.role!r}: is the endpoint right?")
        counts = {name: d.public_samples for name, d in self.described.items()}
        if len(set(counts.values())) != 1 or 0 in counts.values():
            raise RunFailed(f"participants disagree on the public data (samples: {counts}); they "
                            "must use the same task, seed and caps")

    def _register_tokenizers(self) -> None:
        """Make the aligner know every participant's tokenizer, and check the fingerprints."""
        for spec in self.config.participants:
            described = self.described[spec.name]
            source = spec.tokenizer or _builtin_tokenizer(spec.model) or described.tokenizer_name
            opts = CallOptions.within("aligner", self.config.deadlines.describe, self.scope)
            try:
                fingerprint = self.aligner.ensure_tokenizer(
                    described.tokenizer_fingerprint, source, opts)
            except CallFailed as exc:
                self._check_cancel()
                raise RunFailed(f"aligner: cannot register the tokenizer of {spec.name}: "
                                f"{exc}") from exc
            if fingerprint != described.tokenizer_fingerprint:
                raise RunFailed(
                    f"tokenizer {source!r} registered for {spec.name} has fingerprint "
                    f"{fingerprint[:12]}…, but {spec.name} reports "
                    f"{described.tokenizer_fingerprint[:12]}…: set participants[].tokenizer")

    def _prepare_vocab_maps(self) -> None:
        """Have the aligner build every vocabulary map the plan needs before round 1, so that
        one-time set-up does not count as a round's transfer time."""
        steps = {step.name for step in self.plan.steps}
        server = self.config.server.name
        pairs = []
        for client in self._client_names:
            if pl.CLIENT_KNOWLEDGE in steps:
                pairs.append((client, server))
            if pl.SERVER_KNOWLEDGE in steps:
                pairs.append((server, client))
        started = time.perf_counter()
        built = 0.0
        seen: set[tuple[str, str]] = set()
        for source, target in sorted(pairs):
            src = self.described[source].tokenizer_fingerprint
            tgt = self.described[target].tokenizer_fingerprint
            if (src, tgt) in seen:
                continue
            seen.add((src, tgt))
            opts = CallOptions.within("aligner", self.config.deadlines.default, self.scope)
            try:
                built += self.aligner.prepare(src, tgt, self.align.canonical, opts)
            except CallFailed as exc:
                self._check_cancel()
                raise RunFailed(f"aligner: cannot build the vocabulary map {source} → "
                                f"{target}: {exc}") from exc
        self._emit(ev.METRICS, step="setup", metrics={
            "vocab_maps": float(len(seen)), "vocab_map_build_seconds": built,
            "setup_seconds": time.perf_counter() - started},
            message=f"{len(seen)} vocabulary maps ready")

    # ------------------------------------------------------------------ phases
    def _second_chance(self, round_index: int) -> None:
        """A resumed run whose unfinished round had lost its quorum: forget that round's drops,
        so that the dropped clients' steps are tried again (before, the drops persisted and
        every resume failed again). While the quorum holds the drops stay, so that a resumed
        run does what an undisturbed one did."""
        dropped = self.store.dropped(self.run_id, round_index)
        if not dropped or (len(self._client_names) - len(dropped)
                           >= self.config.quorum.min_clients):
            return
        self.store.clear_drops(self.run_id, round_index)
        names = ", ".join(sorted(dropped))
        log.info("%s: round %d lost its quorum before; trying %s again", self.run_id,
                 round_index, names)
        self._emit(ev.METRICS, round=round_index, step="resume",
                   message=f"round {round_index} had lost its quorum (dropped: {names}); "
                           "the resumed run tries these clients again")

    def _run_phase(self, phase: pl.Phase, clock: RoundClock) -> None:
        self._check_cancel()
        # a round already below its quorum runs (and records) nothing more
        self._check_quorum(phase.round)
        dropped = self.store.dropped(self.run_id, phase.round)
        lanes = [lane for lane in phase.lanes
                 if lane.participant not in dropped
                 and not all(step in self.done for step in lane.steps)]
        if not lanes:
            return
        started = time.perf_counter()
        if phase.fan_out:
            outcomes = self._run_fan_out(phase, lanes)
        else:
            outcomes = self._run_lanes(lanes)
        wall = time.perf_counter() - started
        compute = max((o.compute for o in outcomes), default=0.0)
        clock.wall += wall
        clock.compute += min(compute, wall)
        clock.phases[phase.name] = {"wall_seconds": wall, "compute_seconds": min(compute, wall)}
        self._settle(phase, outcomes)

    def _run_lanes(self, lanes: list[pl.Lane]) -> list[LaneOutcome]:
        workers = len(lanes)
        if self.config.max_parallel is not None:
            workers = min(workers, self.config.max_parallel)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lane") as pool:
            futures = [pool.submit(self._run_lane, lane) for lane in lanes]
            return [future.result() for future in futures]

    def _run_lane(self, lane: pl.Lane) -> LaneOutcome:
        outcome = LaneOutcome(lane.participant)
        for step in lane.steps:
            if step in self.done:
                continue
            scope = CancelScope(self.scope)
            try:
                record = self._run_step(step, scope)
            except BaseException as exc:  # noqa: BLE001 - settled by the phase
                outcome.error = exc
                return outcome
            finally:
                scope.close()
            outcome.compute += _compute_of(record)
        return outcome

    def _settle(self, phase: pl.Phase, outcomes: list[LaneOutcome]) -> None:
        """Drop the clients whose lane failed in a droppable way; fail on anything else;
        then check the quorum."""
        fatal: BaseException | None = None
        for outcome in outcomes:
            error = outcome.error
            if error is None:
                continue
            if self.scope.cancelled:
                raise RunCancelled(self.scope.reason or "cancelled")
            if self._droppable(outcome.participant, error):
                self._drop(phase, outcome.participant, error)
            elif fatal is None:
                fatal = error
        if fatal is not None:
            if isinstance(fatal, RunFailed | RunCancelled):
                raise fatal
            raise RunFailed(f"round {phase.round}, {phase.name}: {fatal}") from fatal
        self._check_quorum(phase.round)

    def _droppable(self, participant: str, error: BaseException) -> bool:
        if participant not in self._client_names or not isinstance(error, DROPPABLE):
            return False
        # A deadline is the lane's (its step ran out of time); unreachable only if it is the
        # client itself, not the server or the aligner, that cannot be reached.
        return error.code == "DEADLINE_EXCEEDED" or error.who == participant

    def _drop(self, phase: pl.Phase, participant: str, error: BaseException) -> None:
        step = next((s.name for lane in phase.lanes if lane.participant == participant
                     for s in lane.steps if s not in self.done), phase.name)
        reason = (f"missed the {step} deadline ({self.config.deadlines.seconds(step):g} s)"
                  if getattr(error, "code", "") == "DEADLINE_EXCEEDED"
                  else f"unreachable during {step}: {getattr(error, 'detail', error)}")
        self.store.record_drop(self.run_id, phase.round, participant, step, reason)
        dropped = self.store.dropped(self.run_id, phase.round)
        remaining = len(self._client_names) - len(dropped)
        quorum = self.config.quorum.min_clients
        holds = "quorum holds" if remaining >= quorum else "quorum LOST"
        message = (f"{participant} is left out of round {phase.round}: {reason}; "
                   f"{remaining}/{len(self._client_names)} clients remain, quorum is {quorum} "
                   f"({holds})")
        log.warning("%s: %s", self.run_id, message)
        self._emit(ev.PARTICIPANT_DROPPED, round=phase.round, step=step, participant=participant,
                   message=message)

    def _check_quorum(self, round_index: int) -> None:
        dropped = self.store.dropped(self.run_id, round_index)
        remaining = len(self._client_names) - len(dropped)
        if remaining < self.config.quorum.min_clients:
            raise QuorumLost(
                f"quorum lost in round {round_index}: {remaining} of {len(self._client_names)} "
                f"clients left (dropped: {', '.join(sorted(dropped))}), "
                f"quorum.min_clients is {self.config.quorum.min_clients}")

    def _finish_round(self, round_index: int, clock: RoundClock) -> None:
        overhead = (clock.wall - clock.compute) / clock.wall if clock.wall > 0 else 0.0
        metrics = {"wall_seconds": clock.wall, "compute_seconds": clock.compute,
                   "overhead_share": overhead}
        for name, values in clock.phases.items():
            for key, value in values.items():
                metrics[f"{name}.{key}"] = value
        now = time.time()
        step = pl.Step(round_index, pl.ROUND_DONE)
        record = StepRecord(step, now - clock.wall, now, clock.wall, clock.compute, metrics,
                            {"dropped": sorted(self.store.dropped(self.run_id, round_index))})
        self.store.record_step(self.run_id, record)
        self.done[step] = record
        completed = max(0, round_index)
        self.store.update_run(self.run_id, rounds_completed=completed)
        self._emit(ev.METRICS, round=round_index, step=pl.ROUND_DONE, metrics=metrics,
                   message=f"round {round_index} done: {clock.wall:.1f} s, "
                           f"{100 * overhead:.1f} % outside model compute")

    # ------------------------------------------------------------------ one step
    def _run_step(self, step: pl.Step, scope: CancelScope) -> StepRecord:
        seconds = self.config.deadlines.seconds(step.name)
        opts = CallOptions.within(step.participant or "controller", seconds, scope)
        self.store.update_run(self.run_id, current_step=step.key)
        self._emit(ev.STEP_STARTED, round=step.round, step=step.name,
                   participant=step.participant)
        started_wall, started = time.time(), time.perf_counter()
        retry = RetryWindow(self.config.deadlines.retry_unavailable)
        while True:
            try:
                outcome = self._with_watchdog(lambda o=opts: self._dispatch(step, o), opts)
                break
            except Unreachable as exc:
                # The server or the aligner restarting: every step is idempotent, so wait and
                # run it again. (An unreachable client is dropped from the round instead.)
                if exc.who in self._client_names:
                    raise
                wait = retry.next_wait()
                if wait is None:
                    raise
                self._emit_retry(step.round, step.name, step.participant, exc, wait)
                if scope.wait(wait):
                    raise
                opts = CallOptions.within(opts.who, seconds, scope)
        wall = time.perf_counter() - started
        return self._complete(step, outcome, started_wall, wall)

    def _complete(self, step: pl.Step, outcome: StepOutcome, started_wall: float,
                  wall: float) -> StepRecord:
        metrics = dict(outcome.metrics)
        metrics["wall_seconds"] = wall
        if outcome.compute_seconds is not None:
            metrics["compute_seconds"] = outcome.compute_seconds
        record = StepRecord(step, started_wall, started_wall + wall, wall,
                            outcome.compute_seconds, metrics, outcome.artefacts)
        self.store.record_step(self.run_id, record)  # durable before the next step starts
        self.done[step] = record
        self._emit(ev.STEP_FINISHED, round=step.round, step=step.name,
                   participant=step.participant, metrics=metrics,
                   message=_digest_note(outcome.artefacts))
        if step.name == pl.EVALUATE:
            self._emit(ev.METRICS, round=step.round, step=step.name,
                       participant=step.participant, metrics=outcome.metrics,
                       outcomes=outcome.outcomes)
        return record

    def _with_watchdog(self, work: Callable[[], StepOutcome], opts: CallOptions) -> StepOutcome:
        """Run ``work``; if it outlives its deadline by ``GRACE_SECONDS`` cancel its calls."""
        if opts.deadline is None:
            return work()
        timer = threading.Timer(max(0.0, opts.deadline - time.monotonic()) + GRACE_SECONDS,
                                lambda: opts.scope.cancel("deadline exceeded"))
        timer.daemon = True
        timer.start()
        try:
            return work()
        except CallCancelled as exc:
            if not self.scope.cancelled and opts.scope.cancelled:
                raise _deadline(exc.who) from exc
            raise
        finally:
            timer.cancel()

    def _dispatch(self, step: pl.Step, opts: CallOptions) -> StepOutcome:
        name = step.name
        if name == pl.TRAIN_LOCAL:
            spec = self.config.participant(step.participant)
            updates = self.clients[step.participant].train_local(
                self.run_id, step.round, spec.local_epochs, opts)
            return self._follow(step, updates)
        if name == pl.DISTILL:
            spec = self.config.participant(step.participant)
            sel = self.config.selection
            # Without transfer (the baseline run) nothing is staged: "none" asks for CE on the
            # public data only, explicitly, so a missing stream in a FedMKT run still fails.
            strategy = sel.strategy if self.plan.transfer else "none"
            updates = self.clients[step.participant].distill(
                self.run_id, step.round, strategy, sel.kd_alpha, sel.temperature,
                spec.distill_epochs, opts)
            return self._follow(step, updates)
        if name == pl.EVALUATE:
            updates = self.clients[step.participant].evaluate(self.run_id, step.round, "eval",
                                                              opts)
            outcome = self._follow(step, updates)
            if step.round > 0:
                outcome.artefacts.update(self._adapter_digest(step, opts))
            return outcome
        if name == pl.CLIENT_KNOWLEDGE:
            return self._client_knowledge(step, opts)
        if name == pl.FEDAVG:
            return self._fedavg(step, opts)
        raise RunFailed(f"step {name!r} cannot run on its own")

    def _adapter_digest(self, step: pl.Step, opts: CallOptions) -> dict[str, object]:
        """The digest of the adapter the participant saved for this round (recorded with the
        evaluation, so a resumed run can be checked against an undisturbed one)."""
        try:
            blob = self.clients[step.participant].fetch_adapter(step.round, opts, self.run_id)
        except CallFailed as exc:
            if exc.code == "NOT_FOUND":  # e.g. an LLM that is never trained
                return {}
            raise
        return {"adapter_round": blob.round, "adapter_digest": blob.digest}

    def _follow(self, step: pl.Step, updates: Iterator[ProgressUpdate]) -> StepOutcome:
        """Relay a Progress stream as events; the last message's metrics are the result."""
        final: ProgressUpdate | None = None
        for update in updates:
            metrics = finite_metrics(update.metrics)
            self._emit(ev.STEP_PROGRESS, round=step.round, step=step.name,
                       participant=step.participant, completed=update.completed,
                       total=update.total, metrics=metrics, message=update.message)
            if update.done:
                final = update
        if final is None:
            raise CallFailed(step.participant, "DATA_LOSS",
                             f"{step.name} stream ended without its final (done) message")
        metrics = finite_metrics(final.metrics)
        compute = metrics.get("compute_seconds")
        return StepOutcome(metrics=metrics, compute_seconds=compute, outcomes=final.outcomes)

    # ------------------------------------------------------------------ knowledge
    def _progress(self, step_name: str, round_index: int, total: int):
        def report(participant: str, completed: int) -> None:
            self._emit(ev.STEP_PROGRESS, round=round_index, step=step_name,
                       participant=participant, completed=completed, total=total)
        return report

    def _client_knowledge(self, step: pl.Step, opts: CallOptions) -> StepOutcome:
        """Steps 2–3: the client's knowledge, aligned, staged on the server."""
        server = self.config.server.name
        client = step.participant
        dest = Destination(server, self.clients[server],
                           self.described[server].tokenizer_fingerprint, opts.for_who(server))
        report = self._progress(step.name, step.round, self.described[client].public_samples)
        result = fan_out(source=self.clients[client],
                         source_fingerprint=self.described[client].tokenizer_fingerprint,
                         run_id=self.run_id, round=step.round, settings=self.align,
                         aligner=self.aligner, destinations=[dest], source_opts=opts,
                         on_progress=lambda _server, done: report(client, done))
        if result.source_error is not None:
            raise result.source_error
        if server in result.failures:
            raise result.failures[server]
        return _pipe_outcome(result, server)

    def _run_fan_out(self, phase: pl.Phase, lanes: list[pl.Lane]) -> list[LaneOutcome]:
        """Steps 5–6: the server's knowledge computed once, fanned out to every client.

        While the server or the aligner is unreachable (a restart) the fan-out is tried again,
        with backoff, for the clients it has not reached yet, for up to
        ``deadlines.retry_unavailable`` seconds (every step is idempotent); an unreachable
        client is dropped instead."""
        outcomes: dict[str, LaneOutcome] = {}
        pending = list(lanes)
        retry = RetryWindow(self.config.deadlines.retry_unavailable)
        while pending:
            result, failed = self._fan_out_once(phase, pending, outcomes)
            retryable = {name: error for name, error in failed.items()
                         if self._retryable(name, error)}
            for name, error in failed.items():
                if name not in retryable:
                    outcomes[name] = LaneOutcome(name, error=error)
            if not retryable:
                break
            error = result.source_error or next(iter(retryable.values()))
            wait = retry.next_wait()
            if wait is None:
                if result.source_error is not None:
                    raise RunFailed(f"round {phase.round}: the server's knowledge stream "
                                    f"failed: {result.source_error}") from result.source_error
                for name, error in retryable.items():
                    outcomes[name] = LaneOutcome(name, error=error)
                break
            self._emit_retry(phase.round, pl.SERVER_KNOWLEDGE, "", error, wait)
            if self.scope.wait(wait):
                raise RunCancelled(self.scope.reason or "cancelled")
            pending = [lane for lane in pending if lane.participant in retryable]
        return [outcomes[lane.participant] for lane in lanes]

    def _retryable(self, participant: str, error: BaseException) -> bool:
        """An unreachable server or aligner (not the client itself) during the fan-out."""
        return (isinstance(error, Unreachable) and error.who != participant
                and error.who not in self._client_names)

    def _fan_out_once(self, phase: pl.Phase, lanes: list[pl.Lane],
                      outcomes: dict[str, LaneOutcome]
                      ) -> tuple[FanOutResult, dict[str, BaseException]]:
        """One try of the fan-out to ``lanes``: records each delivered step (its outcome in
        ``outcomes``) and returns the failures by client."""
        server = self.config.server.name
        seconds = self.config.deadlines.seconds(pl.SERVER_KNOWLEDGE)
        total = self.described[server].public_samples
        scopes = {lane.participant: CancelScope(self.scope) for lane in lanes}
        destinations = [
            Destination(lane.participant, self.clients[lane.participant],
                        self.described[lane.participant].tokenizer_fingerprint,
                        CallOptions.within(lane.participant, seconds, scopes[lane.participant]))
            for lane in lanes
        ]
        started_wall, started = time.time(), time.perf_counter()
        for lane in lanes:
            self.store.update_run(self.run_id, current_step=lane.steps[0].key)
            self._emit(ev.STEP_STARTED, round=phase.round, step=pl.SERVER_KNOWLEDGE,
                       participant=lane.participant)
        try:
            result = fan_out(source=self.clients[server],
                             source_fingerprint=self.described[server].tokenizer_fingerprint,
                             run_id=self.run_id, round=phase.round, settings=self.align,
                             aligner=self.aligner, destinations=destinations,
                             source_opts=CallOptions.within(server, seconds, self.scope),
                             on_progress=self._progress(pl.SERVER_KNOWLEDGE, phase.round, total))
        finally:
            for scope in scopes.values():
                scope.close()
        if result.source_error is not None:
            self._check_cancel()
            if not (isinstance(result.source_error, Unreachable)
                    and self._retryable("", result.source_error)):
                raise RunFailed(f"round {phase.round}: the server's knowledge stream failed: "
                                f"{result.source_error}") from result.source_error
            return result, {lane.participant: result.source_error for lane in lanes}
        wall = time.perf_counter() - started
        failed: dict[str, BaseException] = {}
        work_counted = False  # the source's model work of this try, counted once
        for lane in lanes:
            if lane.participant in result.failures:
                error = result.failures[lane.participant]
                if (isinstance(error, CallCancelled) and not self.scope.cancelled
                        and scopes[lane.participant].cancelled):
                    error = _deadline(lane.participant)
                failed[lane.participant] = error
            else:
                record = self._complete(lane.steps[0],
                                        _pipe_outcome(result, lane.participant,
                                                      with_work=not work_counted),
                                        started_wall, wall)
                work_counted = True
                outcomes[lane.participant] = LaneOutcome(lane.participant,
                                                         compute=_compute_of(record))
        return result, failed

    def _emit_retry(self, round_index: int, step: str, participant: str,
                    error: BaseException, wait: float) -> None:
        who = getattr(error, "who", "?")
        detail = getattr(error, "detail", error)
        self._emit(ev.ERROR, round=round_index, step=step, participant=participant,
                   message=f"{who} unreachable during {step}; retrying in {wait:.1f} s: "
                           f"{detail}")

    # ------------------------------------------------------------------ fedavg
    def _fedavg(self, step: pl.Step, opts: CallOptions) -> StepOutcome:
        """Homogeneous scenario: average the clients' LoRA adapters of this round (weighted by
        private sample counts) and push the average back to each of them."""
        from fedmkt.federation.fedavg import average_adapters

        dropped = self.store.dropped(self.run_id, step.round)
        live = [c.name for c in self.config.clients if c.name not in dropped]
        blobs = {name: self.clients[name].fetch_adapter(step.round, opts.for_who(name),
                                                        self.run_id)
                 for name in live}
        weights = [max(1, self.described[name].private_samples) for name in live]
        averaged = average_adapters([blobs[name].data for name in live], weights)
        digest = hashlib.sha256(averaged).hexdigest()
        pushed = {}
        for name in live:
            result = self.clients[name].push_adapter(step.round, averaged, opts.for_who(name))
            pushed[name] = result.digest
        return StepOutcome(metrics={"clients": float(len(live))},
                           artefacts={"average_digest": digest,
                                      "inputs": {n: blobs[n].digest for n in live},
                                      "pushed": pushed})


class RetryWindow:
    """Backoff while the server or the aligner is unreachable: waits of 1, 2, 4 … (at most 30)
    seconds for ``seconds`` from the first failure, the last wait shortened to end when the
    window does, so that the last try is made at its end; ``None`` once it is used up."""

    def __init__(self, seconds: float, *, first: float = 1.0, cap: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._delay = first
        self._cap = cap
        self._clock = clock
        self._until: float | None = None

    def next_wait(self) -> float | None:
        now = self._clock()
        if self._until is None:
            self._until = now + self.seconds
        remaining = self._until - now
        if remaining <= 1e-3:
            return None
        wait = min(self._delay, remaining)
        self._delay = min(self._delay * 2, self._cap)
        return wait


def _deadline(who: str) -> CallFailed:
    from fedmkt.federation.errors import DeadlineMissed

    return DeadlineMissed(who, "deadline exceeded (cancelled by the controller's watchdog)")


def _compute_of(record: StepRecord) -> float:
    """Model compute seconds of a step; a step that reported none counts as all compute
    (knowledge delivery, whose source compute is measured, reports its own)."""
    return record.wall_seconds if record.compute_seconds is None else record.compute_seconds


def _pipe_outcome(result: FanOutResult, destination: str, *,
                  with_work: bool = True) -> StepOutcome:
    """A delivered stream as a step's outcome; ``with_work`` adds the source's model work (a
    stream fanned out to several destinations counts it with the first only)."""
    pipe = result.results[destination]
    share = pipe.aligned / pipe.positions if pipe.positions else 0.0
    work = result.source_work if with_work else {}
    return StepOutcome(
        metrics={"samples": float(pipe.samples), "positions": float(pipe.positions),
                 "aligned": float(pipe.aligned), "fallback": float(pipe.fallback),
                 "aligned_share": share, "bytes": float(pipe.bytes),
                 "chunks": float(pipe.chunks), **work},
        artefacts={"digest": pipe.digest, "samples": pipe.samples},
        compute_seconds=result.source_compute,
    )


def _digest_note(artefacts: dict[str, object]) -> str:
    digest = artefacts.get("digest") or artefacts.get("average_digest")
    return f"sha256 {digest}" if isinstance(digest, str) and digest else ""


def _builtin_tokenizer(model: str) -> str | None:
    """The builtin tokenizer of a builtin model name, else None."""
    try:
        from fedmkt.models.registry import BUILTIN_MODELS
    except ImportError:  # pragma: no cover - the models package is part of fedmkt
        return None
    builtin = BUILTIN_MODELS.get(model)
    return builtin.tokenizer if builtin is not None else None
