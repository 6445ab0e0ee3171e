"""The participant gRPC service over loopback: progress streams, knowledge in and out, adapters,
errors as statuses, cancellation, health; settings loading; and one full FedMKT round between a
server and a client with different tokenizers through the real aligner service."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from participant_helpers import last_progress, make_config, relay, write_task

from fedmkt.participant.config import ConfigError
from fedmkt.wire.chunking import chunk_knowledge
from fedmkt.wire.outcomes import outcomes_from_pb
from fedmkt.wire.v1 import (
    aligner_pb2,
    aligner_pb2_grpc,
    participant_pb2,
    participant_pb2_grpc,
    tensor_pb2,
)
from services.participant.main import ParticipantProcess, load_participant
from services.settings import AlignerSettings, ParticipantSettings, SettingsError

RUN = "run-svc"


def _settings() -> ParticipantSettings:
    return ParticipantSettings(host="127.0.0.1", grpc_port=0, workers=4, busy_timeout_s=30)


def _stub(port: int) -> participant_pb2_grpc.ParticipantServiceStub:
    return participant_pb2_grpc.ParticipantServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))


def _run(round_index: int, run_id: str = RUN) -> participant_pb2.RunRef:
    return participant_pb2.RunRef(run_id=run_id, round=round_index)


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    return write_task(tmp_path_factory.mktemp("task"))


@pytest.fixture(scope="module")
def client_process(task, tmp_path_factory):
    config = make_config(task, tmp_path_factory.mktemp("client"), name="client-0",
                         role="client", model="tiny-gpt2")
    process = ParticipantProcess(_settings(), config)
    process.start()
    yield process
    process.stop(0)


@pytest.fixture(scope="module")
def server_process(task, tmp_path_factory):
    config = make_config(task, tmp_path_factory.mktemp("server"), name="server",
                         role="server", model="tiny-mistral")
    process = ParticipantProcess(_settings(), config)
    process.start()
    yield process
    process.stop(0)


@pytest.fixture(scope="module")
def client(client_process):
    return _stub(client_process.grpc_port)


@pytest.fixture(scope="module")
def server(server_process):
    return _stub(server_process.grpc_port)


# --------------------------------------------------------------------------- basics


def test_health_and_describe(client_process, client) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{client_process.grpc_port}")
    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(service="fedmkt.v1.ParticipantService"))
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    info = client.Describe(participant_pb2.DescribeRequest())
    assert info.name == "client-0" and info.role == participant_pb2.ROLE_CLIENT
    assert info.tokenizer.name == "gpt2" and len(info.tokenizer.fingerprint) == 64
    assert info.public_samples == 12 and info.private_samples == 12


def test_public_tokens_stream_only_public_ids(client_process, client) -> None:
    chunks = list(client.PublicTokens(participant_pb2.PublicTokensRequest()))
    got = {t.sample_id for c in chunks for t in c.samples}
    assert got == set(client_process.participant.public.ids())
    assert all(not t.text for c in chunks for t in c.samples)


def test_train_local_streams_progress_then_done(client) -> None:
    messages = list(client.TrainLocal(participant_pb2.TrainLocalRequest(run=_run(0), epochs=2)))
    steps = [m for m in messages if not m.done]
    assert [m.completed for m in steps] == list(range(1, 7))
    assert all(m.step == "train_local" and m.total == 6 for m in steps)
    final = messages[-1]
    assert final.done and final.metrics["steps"] == 6 and final.metrics["loss"] > 0
    assert final.metrics["compute_seconds"] > 0
    assert client.Describe(participant_pb2.DescribeRequest()).latest_adapter_round == 0


def test_compute_knowledge_streams_chunks_and_reports_compute_time(client_process,
                                                                   client) -> None:
    request = participant_pb2.ComputeKnowledgeRequest(run=_run(0, "run-kn"), top_k=4,
                                                      logit_dtype=tensor_pb2.DTYPE_BFLOAT16)
    call = client.ComputeKnowledge(request)
    chunks = list(call)
    assert all(c.ByteSize() <= 1 << 20 for c in chunks)
    header = chunks[0].header
    assert (header.run_id, header.round, header.source, header.top_k) == ("run-kn", 0,
                                                                           "client-0", 4)
    parts = [p for c in chunks for p in c.samples]
    assert {p.sample_id for p in parts} == set(client_process.participant.public.ids())
    assert all(p.topk_logits.dtype == tensor_pb2.DTYPE_BFLOAT16 for p in parts)
    trailer = dict(call.trailing_metadata())
    assert float(trailer["fedmkt-compute-seconds"]) > 0


def test_errors_come_back_as_statuses(client, server) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        last_progress(server.TrainLocal(participant_pb2.TrainLocalRequest(run=_run(0))))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as caught:
        last_progress(client.Evaluate(participant_pb2.EvaluateRequest(run=_run(0),
                                                                       split="private")))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as caught:
        last_progress(client.TrainLocal(participant_pb2.TrainLocalRequest()))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as caught:
        list(client.FetchAdapter(participant_pb2.FetchAdapterRequest(round=99)))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_bad_knowledge_is_refused_over_grpc_and_nothing_is_staged(client_process, client
                                                                  ) -> None:
    participant = client_process.participant
    out = participant.compute_knowledge("run-grpc-bad", 0)
    chunks = list(chunk_knowledge(out.samples, out.header))
    for chunk in chunks:
        chunk.header.source = "teacher"
    # The stream is for round 0, the call says round 1: well formed but not for this call.
    with pytest.raises(grpc.RpcError) as caught:
        client.ReceiveKnowledge(iter(chunks), metadata=(("fedmkt-run-id", "run-grpc-bad"),
                                                        ("fedmkt-round", "1")))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    broken = [type(c).FromString(c.SerializeToString()) for c in chunks]
    broken[0].samples[0].topk_ids.data = broken[0].samples[0].topk_ids.data[:-4]
    with pytest.raises(grpc.RpcError) as caught:
        client.ReceiveKnowledge(iter(broken))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert participant.staged_sources("run-grpc-bad", 0) == []
    assert participant.staged_sources("run-grpc-bad", 1) == []
    good = client.ReceiveKnowledge(iter(chunks))  # run and round from the header
    assert good.samples == 12 and len(good.digest) == 64
    assert participant.staged_sources("run-grpc-bad", 0) == ["teacher"]


def test_adapters_travel_in_chunks_and_are_checked(client) -> None:
    last_progress(client.TrainLocal(participant_pb2.TrainLocalRequest(run=_run(0))))
    chunks = list(client.FetchAdapter(participant_pb2.FetchAdapterRequest(round=-1)))
    assert chunks[-1].last and all(len(c.data) <= 1 << 20 for c in chunks)
    data = b"".join(c.data for c in chunks)
    assert hashlib.sha256(data).hexdigest() == chunks[0].digest

    pieces = [participant_pb2.AdapterChunk(round=0, digest=chunks[0].digest,
                                           data=data[i : i + 4096],
                                           last=i + 4096 >= len(data))
              for i in range(0, len(data), 4096)]
    response = client.PushAdapter(iter(pieces))
    assert response.tensors > 0
    tampered = [participant_pb2.AdapterChunk(round=0, digest="0" * 64, data=data, last=True)]
    with pytest.raises(grpc.RpcError) as caught:
        client.PushAdapter(iter(tampered))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as caught:
        client.PushAdapter(iter(pieces[:-1]))  # never says last
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_cancelling_a_call_leaves_the_participant_usable(client) -> None:
    last_progress(client.TrainLocal(participant_pb2.TrainLocalRequest(run=_run(0, "run-c"))))
    call = client.TrainLocal(participant_pb2.TrainLocalRequest(run=_run(1, "run-c"), epochs=50))
    first = next(call)
    assert first.step == "train_local" and not first.done
    call.cancel()
    # The next call waits for the cancelled one to stop, then runs normally.
    last_progress(client.Evaluate(participant_pb2.EvaluateRequest(run=_run(0, "run-c"))))
    assert client.Describe(participant_pb2.DescribeRequest()).latest_adapter_round == 0


# --------------------------------------------------------------------------- settings


def test_one_yaml_file_holds_service_and_participant_settings(task, tmp_path,
                                                              monkeypatch) -> None:
    path = tmp_path / "client.yaml"
    path.write_text(
        "name: client-3\nmodel: tiny-gpt2\ngrpc_port: 50999\nmetrics_port: 9100\n"
        f"data:\n  task: {task}\n  num_clients: 4\n  client_index: 3\n", encoding="utf-8")
    monkeypatch.setenv("FEDMKT_PARTICIPANT_TOP_K", "32")
    monkeypatch.setenv("FEDMKT_PARTICIPANT_DATA__PARTITION_SEED", "9")
    settings, config = load_participant(path, role="client",
                                        service_flags={"state_dir": tmp_path / "state"})
    assert (settings.grpc_port, settings.metrics_port) == (50999, 9100)
    assert config.role == "client" and config.top_k == 32 and config.data.partition_seed == 9
    assert config.state_dir == tmp_path / "state"
    path.write_text(path.read_text() + "role: client\n", encoding="utf-8")
    with pytest.raises(SettingsError, match="role"):
        load_participant(path, role="server")
    path.write_text(path.read_text() + "learning_rat: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="learning_rat"):
        load_participant(path, role="client")


# --------------------------------------------------------------------------- a full round


@pytest.fixture(scope="module")
def aligner(tmp_path_factory):
    from services.aligner.main import AlignerProcess

    process = AlignerProcess(AlignerSettings(state_dir=tmp_path_factory.mktemp("aligner"),
                                             grpc_port=0, http_port=-1, workers=4))
    process.start()
    stub = aligner_pb2_grpc.AlignerServiceStub(
        grpc.insecure_channel(f"127.0.0.1:{process.grpc_port}"))
    for builtin in ("gpt2", "mistral"):
        stub.RegisterTokenizer(aligner_pb2.RegisterTokenizerRequest(builtin=builtin))
    yield stub
    process.stop(0)


@pytest.mark.slow
def test_one_full_round_between_two_tokenizers_over_grpc(client, server, aligner,
                                                        client_process, server_process) -> None:
    """DESIGN §1: train, knowledge out, align, selective KD on the server, knowledge back,
    align, KD on the client, evaluate; adapters saved on both sides."""
    run, rnd = "run-round", 0
    info_c = client.Describe(participant_pb2.DescribeRequest())
    info_s = server.Describe(participant_pb2.DescribeRequest())
    assert info_c.tokenizer.fingerprint != info_s.tokenizer.fingerprint

    trained = last_progress(client.TrainLocal(participant_pb2.TrainLocalRequest(run=_run(rnd,
                                                                                         run))))
    assert trained.metrics["samples"] == 12

    to_server = relay(client, aligner, server, run, rnd)
    assert to_server.samples == info_s.public_samples
    assert server_process.participant.staged_sources(run, rnd) == ["client-0"]
    distilled = last_progress(server.Distill(participant_pb2.DistillRequest(run=_run(rnd, run))))
    assert distilled.metrics["teachers"] == 1.0
    assert 0.0 <= distilled.metrics["distilled_fraction"] <= 1.0
    assert distilled.metrics["selected/client-0"] == pytest.approx(
        distilled.metrics["distilled_fraction"] * 12)

    to_client = relay(server, aligner, client, run, rnd)
    assert to_client.samples == info_c.public_samples
    assert client_process.participant.staged_sources(run, rnd) == ["server"]
    last_progress(client.Distill(participant_pb2.DistillRequest(run=_run(rnd, run),
                                                                strategy="dualmince")))

    for stub in (client, server):
        evaluated = last_progress(stub.Evaluate(participant_pb2.EvaluateRequest(run=_run(rnd,
                                                                                         run))))
        assert 0.0 <= evaluated.metrics["acc"] <= 1.0 and evaluated.metrics["nll"] > 0
        assert evaluated.metrics["n"] == 8
        outcomes = outcomes_from_pb(evaluated.outcomes)  # one value per held-out sample
        assert outcomes is not None and len(outcomes) == 8
        assert outcomes.column("acc").mean() == pytest.approx(evaluated.metrics["acc"])
        assert stub.Describe(participant_pb2.DescribeRequest()).latest_adapter_round == rnd
        adapter = list(stub.FetchAdapter(participant_pb2.FetchAdapterRequest(round=rnd)))
        assert adapter[-1].last and adapter[0].round == rnd
        assert json.loads(adapter[-1].peft_config_json)["peft_type"] == "LORA"
        assert adapter[-1].base_model == ("tiny-gpt2" if stub is client else "tiny-mistral")


@pytest.mark.slow
def test_fedmkt_serve_client_prints_ready_and_serves(task, tmp_path) -> None:
    config = tmp_path / "client.yaml"
    config.write_text(
        f"name: client-0\nrole: client\nmodel: tiny-gpt2\ndevice: cpu\nmax_length: 64\n"
        f"data:\n  task: {task}\n  max_public: 4\n  max_private: 4\n  max_eval: 4\n",
        encoding="utf-8")
    env = {**os.environ, "FEDMKT_PARTICIPANT_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedmkt", "serve", "client", "--config", str(config),
         "--grpc-port", "0", "--state-dir", str(tmp_path / "state")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY client-0 grpc="), line
        port = int(line.split("grpc=")[1])
        info = _stub(port).Describe(participant_pb2.DescribeRequest(), timeout=30)
        assert info.private_samples == 4
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0
