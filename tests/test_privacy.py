"""Privacy: nothing a client sends over gRPC carries its private data.

The client's service runs behind a server interceptor that records the serialized bytes of every
response message it sends, through one whole FedMKT round (describe, public tokens, local
training, knowledge out, knowledge in, distillation, evaluation, adapter fetch). No recorded
message may contain a private sample's text (UTF-8) or any 8 consecutive private token ids (as
int32 bytes, the wire encoding), except 8-token runs that public or eval samples share (prompt
templates: those say nothing about the private data).
"""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
import numpy as np
import pytest
from participant_helpers import last_progress, make_config, relay, write_task

from fedmkt.participant.core import Participant
from fedmkt.wire.v1 import aligner_pb2, aligner_pb2_grpc, participant_pb2, participant_pb2_grpc
from services.participant.grpc_service import ParticipantServicer
from services.participant.main import ParticipantProcess
from services.settings import AlignerSettings, ParticipantSettings

WINDOW = 8


class SentBytes(grpc.ServerInterceptor):
    """Records ``(method, bytes)`` of every response message the service serializes."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.response_serializer is None:
            return handler
        serialize, method = handler.response_serializer, handler_call_details.method

        def recording(message):
            data = serialize(message)
            with self._lock:
                self.messages.append((method, data))
            return data

        return handler._replace(response_serializer=recording)


def _windows(ids: list[int]) -> set[bytes]:
    arr = np.asarray(ids, dtype="<i4")
    return {arr[i : i + WINDOW].tobytes() for i in range(len(arr) - WINDOW + 1)}


@pytest.mark.slow
def test_no_private_text_or_tokens_leave_the_client(tmp_path) -> None:
    task = write_task(tmp_path)
    participant = Participant(make_config(task, tmp_path / "client", name="client-0",
                                          role="client", model="tiny-gpt2"))
    recorder = SentBytes()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                              interceptors=[recorder])
    participant_pb2_grpc.add_ParticipantServiceServicer_to_server(
        ParticipantServicer(participant), grpc_server)
    client_port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()

    server_process = ParticipantProcess(
        ParticipantSettings(grpc_port=0, workers=4),
        make_config(task, tmp_path / "server", name="server", role="server",
                    model="tiny-smollm2"))
    server_process.start()
    from services.aligner.main import AlignerProcess

    aligner_process = AlignerProcess(AlignerSettings(state_dir=tmp_path / "aligner",
                                                     grpc_port=0, http_port=-1, workers=4))
    aligner_process.start()
    try:
        client = participant_pb2_grpc.ParticipantServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{client_port}"))
        server = participant_pb2_grpc.ParticipantServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{server_process.grpc_port}"))
        aligner = aligner_pb2_grpc.AlignerServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{aligner_process.grpc_port}"))
        for builtin in ("gpt2", "smollm2"):
            aligner.RegisterTokenizer(aligner_pb2.RegisterTokenizerRequest(builtin=builtin))

        run = participant_pb2.RunRef(run_id="run-private", round=0)
        client.Describe(participant_pb2.DescribeRequest())
        last_progress(client.TrainLocal(participant_pb2.TrainLocalRequest(run=run)))
        relay(client, aligner, server, run.run_id, run.round)
        last_progress(server.Distill(participant_pb2.DistillRequest(run=run)))
        relay(server, aligner, client, run.run_id, run.round)
        last_progress(client.Distill(participant_pb2.DistillRequest(run=run)))
        last_progress(client.Evaluate(participant_pb2.EvaluateRequest(run=run)))
        last_progress(client.Evaluate(participant_pb2.EvaluateRequest(run=run, split="public")))
        list(client.FetchAdapter(participant_pb2.FetchAdapterRequest(round=-1)))
        with pytest.raises(grpc.RpcError):
            last_progress(client.Evaluate(participant_pb2.EvaluateRequest(run=run,
                                                                           split="private")))
    finally:
        grpc_server.stop(0)
        server_process.stop(0)
        aligner_process.stop(0)

    methods = {method.rsplit("/", 1)[-1] for method, _ in recorder.messages}
    assert {"Describe", "PublicTokens", "TrainLocal", "ComputeKnowledge", "ReceiveKnowledge",
            "Distill", "Evaluate", "FetchAdapter"} <= methods
    sent = [data for _, data in recorder.messages]

    shared = set()
    for split in (participant.public, participant.eval_split):
        for enc in split:
            shared |= _windows(enc.input_ids)
    # The recorder does see token ids: public ones go out (PublicTokens, ComputeKnowledge).
    public_window = next(iter(_windows(participant.public.encoded[0].input_ids)))
    assert any(public_window in data for data in sent)

    assert len(participant.private) == 12
    for sample, enc in zip(participant.private.samples, participant.private.encoded,
                           strict=True):
        texts = [sample.prompt + sample.answer, sample.prompt, sample.prompt.split()[1]]
        for text in texts:
            needle = text.encode("utf-8")
            assert not any(needle in data for data in sent), f"private text {text!r} was sent"
        private_only = _windows(enc.input_ids) - shared
        assert private_only, "every private sample has token runs of its own"
        for window in private_only:
            assert not any(window in data for data in sent), f"private tokens of {sample.id}"
