"""gRPC ``fedmkt.v1.ControllerService``: translates between the wire and ``RunManager``."""

from __future__ import annotations

from collections.abc import Iterator

from fedmkt.errors import InvalidArgument
from fedmkt.federation.events import Event
from fedmkt.federation.manager import RunManager
from fedmkt.federation.store import RunRecord
from fedmkt.wire.outcomes import outcomes_from_pb, outcomes_to_pb
from fedmkt.wire.v1 import controller_pb2, controller_pb2_grpc
from services.common import map_errors

MAX_CONFIG_CHARS = 1 << 20

RUN_STATES = {
    "pending": controller_pb2.RUN_STATE_PENDING,
    "running": controller_pb2.RUN_STATE_RUNNING,
    "succeeded": controller_pb2.RUN_STATE_SUCCEEDED,
    "failed": controller_pb2.RUN_STATE_FAILED,
    "cancelled": controller_pb2.RUN_STATE_CANCELLED,
}
EVENT_KINDS = {name.removeprefix("EVENT_KIND_").lower(): value
               for name, value in controller_pb2.EventKind.items() if value}
STATE_NAMES = {value: name for name, value in RUN_STATES.items()}
KIND_NAMES = {value: name for name, value in EVENT_KINDS.items()}


def run_info(record: RunRecord) -> controller_pb2.RunInfo:
    return controller_pb2.RunInfo(
        run_id=record.run_id, state=RUN_STATES[record.state], rounds=record.rounds,
        rounds_completed=record.rounds_completed, current_step=record.current_step,
        error=record.error, started_at=record.started_at, finished_at=record.finished_at)


def run_event(event: Event) -> controller_pb2.RunEvent:
    return controller_pb2.RunEvent(
        run_id=event.run_id, sequence=event.sequence, time=event.time,
        kind=EVENT_KINDS[event.kind], round=event.round, step=event.step,
        participant=event.participant, message=event.message, metrics=event.metrics,
        completed=event.completed, total=event.total,
        outcomes=None if event.outcomes is None else outcomes_to_pb(event.outcomes))


def event_from_pb(message: controller_pb2.RunEvent) -> Event:
    """A received RunEvent as an ``Event`` (watchers, the embedded run's report)."""
    return Event(run_id=message.run_id, kind=KIND_NAMES.get(message.kind, "error"),
                 round=message.round, step=message.step, participant=message.participant,
                 message=message.message, metrics=dict(message.metrics),
                 completed=message.completed, total=message.total, time=message.time,
                 sequence=message.sequence, outcomes=outcomes_from_pb(message.outcomes))


def _run_id(value: str) -> str:
    if not value:
        raise InvalidArgument("run_id is empty")
    if len(value) > 256 or not value.isprintable():
        raise InvalidArgument("run_id must be at most 256 printable characters")
    return value


class ControllerServicer(controller_pb2_grpc.ControllerServiceServicer):
    def __init__(self, manager: RunManager) -> None:
        self.manager = manager

    @map_errors
    def StartRun(self, request, context):
        if len(request.config_yaml) > MAX_CONFIG_CHARS:
            raise InvalidArgument(f"config_yaml is longer than {MAX_CONFIG_CHARS} characters")
        if request.run_id:
            _run_id(request.run_id)
        return run_info(self.manager.start(request.config_yaml, request.run_id))

    @map_errors
    def WatchRun(self, request, context) -> Iterator[controller_pb2.RunEvent]:
        if request.after_sequence < 0:
            raise InvalidArgument("after_sequence must be >= 0")
        events = self.manager.watch(_run_id(request.run_id), request.after_sequence,
                                    stop=lambda: not context.is_active())
        for event in events:
            yield run_event(event)

    @map_errors
    def GetRun(self, request, context):
        return run_info(self.manager.get(_run_id(request.run_id)))

    @map_errors
    def ListRuns(self, request, context):
        return controller_pb2.ListRunsResponse(runs=[run_info(r) for r in self.manager.list()])

    @map_errors
    def CancelRun(self, request, context):
        return run_info(self.manager.cancel(_run_id(request.run_id)))
