"""The ControllerService over loopback gRPC (Start/Watch/Get/List/Cancel) with fake
participants, and the controller's gRPC clients' deadline / cancel / error translation."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedmkt.config import parse_federation_config
from fedmkt.federation.errors import CallCancelled, CallFailed, DeadlineMissed, Unreachable
from fedmkt.federation.fakes import Script, fake_federation
from fedmkt.federation.interfaces import CallOptions, CancelScope
from fedmkt.federation.manager import RunManager
from fedmkt.federation.store import RunStore
from fedmkt.wire.v1 import (
    controller_pb2,
    controller_pb2_grpc,
    participant_pb2,
    participant_pb2_grpc,
)
from services.common import bind, build_server
from services.controller.clients import GrpcParticipant, check_endpoints
from services.controller.grpc_service import event_from_pb
from services.controller.main import ControllerProcess
from services.settings import ControllerSettings


def config_text(rounds: int = 1, name: str = "svc-fed") -> str:
    return yaml.safe_dump({
        "name": name, "rounds": rounds, "task": {"name": "rte"},
        "participants": [
            {"name": "llm", "role": "server", "model": "fake-llm"},
            {"name": "c1", "role": "client", "model": "fake-slm"},
            {"name": "c2", "role": "client", "model": "fake-slm"},
        ],
    })


@pytest.fixture
def controller(tmp_path: Path):
    """A controller process on a free loopback port whose runs use fakes; yields
    (stub, channel, scripts by run name, endpoint)."""
    scripts: dict[str, dict] = {}

    def connect(config):
        return fake_federation(config, scripts=scripts.get(config.name)).connections()

    settings = ControllerSettings(host="127.0.0.1", grpc_port=0, state_dir=tmp_path / "ctl")
    manager = RunManager(RunStore(tmp_path / "ctl" / "controller.db"), connect)
    process = ControllerProcess(settings, manager=manager)
    process.start()
    endpoint = f"127.0.0.1:{process.grpc_port}"
    channel = grpc.insecure_channel(endpoint)
    try:
        yield controller_pb2_grpc.ControllerServiceStub(channel), channel, scripts, endpoint
    finally:
        channel.close()
        process.stop(grace=1.0)


def watch_all(stub, run_id: str, after: int = 0) -> list[controller_pb2.RunEvent]:
    return list(stub.WatchRun(controller_pb2.WatchRunRequest(run_id=run_id,
                                                             after_sequence=after), timeout=60))


def test_start_watch_get_list_over_grpc(controller) -> None:
    stub, channel, _, _ = controller
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="fedmkt.v1.ControllerService"), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING

    from prometheus_client import REGISTRY

    def evaluated() -> float:
        return REGISTRY.get_sample_value("fedmkt_controller_steps_total",
                                         {"step": "evaluate"}) or 0.0

    before = evaluated()
    info = stub.StartRun(controller_pb2.StartRunRequest(config_yaml=config_text()), timeout=10)
    assert info.run_id == "svc-fed" and info.rounds == 1
    events = watch_all(stub, "svc-fed")
    kinds = [controller_pb2.EventKind.Name(e.kind) for e in events]
    assert kinds[0] == "EVENT_KIND_RUN_STARTED" and kinds[-1] == "EVENT_KIND_RUN_FINISHED"
    assert "EVENT_KIND_STEP_STARTED" in kinds and "EVENT_KIND_METRICS" in kinds
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    evaluations = [e for e in events if e.kind == controller_pb2.EVENT_KIND_METRICS
                   and e.step == "evaluate"]
    assert {(e.round, e.participant) for e in evaluations} == {
        (r, p) for r in (0, 1) for p in ("llm", "c1", "c2")}
    assert all("accuracy" in e.metrics for e in evaluations)
    assert event_from_pb(events[-1]).kind == "run_finished"
    assert evaluated() - before == 6  # Prometheus counts what the events say

    # replay from a sequence number gives the tail only
    tail = watch_all(stub, "svc-fed", after=events[-3].sequence)
    assert [e.sequence for e in tail] == [e.sequence for e in events[-2:]]

    got = stub.GetRun(controller_pb2.GetRunRequest(run_id="svc-fed"), timeout=10)
    assert got.state == controller_pb2.RUN_STATE_SUCCEEDED and got.rounds_completed == 1
    assert got.finished_at >= got.started_at > 0
    listed = stub.ListRuns(controller_pb2.ListRunsRequest(), timeout=10)
    assert [r.run_id for r in listed.runs] == ["svc-fed"]


def test_cancel_over_grpc(controller) -> None:
    stub, _, scripts, _ = controller
    scripts["slow-fed"] = {"c1": Script({("train_local", 1): ("delay", 60)})}
    stub.StartRun(controller_pb2.StartRunRequest(config_yaml=config_text(name="slow-fed")),
                  timeout=10)
    seen: list[controller_pb2.RunEvent] = []
    stream = stub.WatchRun(controller_pb2.WatchRunRequest(run_id="slow-fed"), timeout=60)
    for event in stream:
        seen.append(event)
        if event.kind == controller_pb2.EVENT_KIND_STEP_STARTED and event.step == "train_local":
            stub.CancelRun(controller_pb2.CancelRunRequest(run_id="slow-fed"), timeout=10)
    assert seen[-1].kind == controller_pb2.EVENT_KIND_RUN_FINISHED
    got = stub.GetRun(controller_pb2.GetRunRequest(run_id="slow-fed"), timeout=10)
    assert got.state == controller_pb2.RUN_STATE_CANCELLED


def test_bad_requests_get_actionable_statuses(controller) -> None:
    stub, _, _, _ = controller
    bad = yaml.safe_load(config_text())
    bad["participants"][1]["learning_rate"] = -1
    with pytest.raises(grpc.RpcError) as info:
        stub.StartRun(controller_pb2.StartRunRequest(config_yaml=yaml.safe_dump(bad)), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "participants[1].learning_rate" in info.value.details()

    with pytest.raises(grpc.RpcError) as info:
        stub.GetRun(controller_pb2.GetRunRequest(run_id="nope"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND

    with pytest.raises(grpc.RpcError) as info:
        list(stub.WatchRun(controller_pb2.WatchRunRequest(run_id="nope"), timeout=10))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND

    with pytest.raises(grpc.RpcError) as info:
        stub.StartRun(controller_pb2.StartRunRequest(config_yaml=config_text(),
                                                     run_id="bad id"), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_real_controller_requires_endpoints() -> None:
    config = parse_federation_config(config_text())
    with pytest.raises(Exception, match=r"participants\[0\].endpoint.*aligner.endpoint"):
        check_endpoints(config)


# ---------------------------------------------------------------------------- gRPC clients


class _HangingParticipant(participant_pb2_grpc.ParticipantServiceServicer):
    """TrainLocal never finishes (until cancelled); Describe fails with INVALID_ARGUMENT."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def Describe(self, request, context):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no such thing")

    def TrainLocal(self, request, context) -> Iterator[participant_pb2.Progress]:
        yield participant_pb2.Progress(step="train_local", completed=0, total=10)
        while context.is_active():
            time.sleep(0.01)
        self.cancelled.set()


@pytest.fixture
def hanging():
    servicer = _HangingParticipant()
    server = build_server(max_workers=4)
    participant_pb2_grpc.add_ParticipantServiceServicer_to_server(servicer, server)
    port = bind(server, "127.0.0.1", 0)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield GrpcParticipant("c1", channel), servicer
    finally:
        channel.close()
        server.stop(0)


def test_client_maps_deadline_cancel_and_errors(hanging) -> None:
    client, servicer = hanging
    with pytest.raises(DeadlineMissed) as info:
        list(client.train_local("r", 1, 1, CallOptions.within("c1", 0.3, CancelScope())))
    assert info.value.who == "c1"
    assert servicer.cancelled.wait(10)  # the server saw the call end

    scope = CancelScope()
    timer = threading.Timer(0.3, scope.cancel, args=("stop",))
    timer.start()
    with pytest.raises(CallCancelled):
        list(client.train_local("r", 1, 1, CallOptions.within("c1", 30, scope)))

    with pytest.raises(CallFailed) as failed:
        client.describe(CallOptions.within("c1", 5, CancelScope()))
    assert failed.value.code == "INVALID_ARGUMENT" and "no such thing" in str(failed.value)


def test_client_reports_an_unreachable_participant() -> None:
    channel = grpc.insecure_channel("127.0.0.1:1")
    try:
        with pytest.raises(Unreachable):
            GrpcParticipant("c9", channel).describe(CallOptions.within("c9", 5, CancelScope()))
    finally:
        channel.close()


def test_cli_watch_attaches_to_a_run(controller, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedmkt.cli import app

    stub, _, _, target = controller
    stub.StartRun(controller_pb2.StartRunRequest(config_yaml=config_text(name="watched")),
                  timeout=10)
    result = CliRunner().invoke(app, ["watch", "watched", "--controller", target,
                                      "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "run watched started" in result.output
    assert "round 1 evaluation c1: accuracy=" in result.output
    assert "run watched succeeded (1/1 rounds)" in result.output

    result = CliRunner().invoke(app, ["watch", "missing", "--controller", target,
                                      "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2 and "cannot watch missing" in result.output
