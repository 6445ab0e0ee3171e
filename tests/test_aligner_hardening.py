"""The aligner against hostile or careless callers (issue 10): resource limits on gRPC, sizes
measured in tokens, bodies limited while read, outputs that are valid inputs, one error shape,
errors that say what to fix.

Tokenizers here are tiny byte-level BPEs trained in memory, so that vocabulary maps take
milliseconds and every test runs in seconds.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedmkt.wire.v1 import aligner_pb2, aligner_pb2_grpc
from services.aligner.main import AlignerProcess
from services.settings import AlignerSettings

CORPUS_A = ["the quick brown fox jumps over the lazy dog"] * 20
CORPUS_B = ["lorem ipsum dolor sit amet, consectetur adipiscing"] * 20


def tiny_tokenizer_files(corpus: list[str], vocab_size: int = 300) -> dict[str, bytes]:
    """The files of a small byte-level BPE tokenizer folder (any text encodes, bytes as
    fallback: a character outside the corpus costs up to 4 tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    with tempfile.TemporaryDirectory() as folder:
        fast.save_pretrained(folder)
        return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def tiny_files() -> tuple[dict[str, bytes], dict[str, bytes]]:
    return tiny_tokenizer_files(CORPUS_A), tiny_tokenizer_files(CORPUS_B, 290)


def _start(tmp_path: Path, **settings) -> tuple[AlignerProcess, grpc.Channel]:
    process = AlignerProcess(AlignerSettings(grpc_port=0, http_port=-1, state_dir=tmp_path,
                                             **settings))
    process.start()
    return process, grpc.insecure_channel(f"127.0.0.1:{process.grpc_port}")


class IdleStream:
    """An AlignKnowledge stream that sends ``first`` (if any) and then nothing."""

    def __init__(self, stub, first=None) -> None:
        self.release = threading.Event()
        self.code: grpc.StatusCode | None = None
        self.details = ""

        def requests():
            if first is not None:
                yield first
            self.release.wait()

        self.call = stub.AlignKnowledge(requests())
        self.thread = threading.Thread(target=self._consume, daemon=True)
        self.thread.start()

    def _consume(self) -> None:
        try:
            list(self.call)
            self.code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            self.code, self.details = exc.code(), exc.details() or ""

    def close(self) -> None:
        self.release.set()
        self.call.cancel()


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# -- 1. idle streams cannot take the gRPC side down ---------------------------------------------

def test_idle_streams_starve_neither_health_nor_other_calls(tmp_path) -> None:
    """More idle AlignKnowledge streams than workers (the default settings): the health check and
    a unary call are still answered at once; streams over the cap are refused with a message
    naming the setting."""
    process, channel = _start(tmp_path)
    settings = process.settings
    streams = []
    try:
        stub = aligner_pb2_grpc.AlignerServiceStub(channel)
        streams = [IdleStream(stub) for _ in range(settings.workers + 2)]
        max_streams = getattr(settings, "max_streams", 0) or settings.workers
        expected_refusals = len(streams) - min(max_streams, settings.workers)
        assert expected_refusals > 0
        _wait_for(lambda: sum(s.code is not None for s in streams) >= expected_refusals)
        health = health_pb2_grpc.HealthStub(channel)
        for service in ["", "fedmkt.v1.AlignerService"]:
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=3)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub.ListTokenizers(aligner_pb2.ListTokenizersRequest(), timeout=3)
        refused = [s for s in streams if s.code is not None]
        assert len(refused) == expected_refusals
        for s in refused:
            assert s.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_streams" in s.details and "retry" in s.details
    finally:
        for s in streams:
            s.close()
        channel.close()
        process.stop(grace=0.2)


def test_idle_stream_is_ended_and_its_slot_freed(tmp_path, tiny_files) -> None:
    process, channel = _start(tmp_path, workers=3, max_streams=2, health_workers=1,
                              stream_idle_timeout_s=0.5)
    streams = []
    try:
        stub = aligner_pb2_grpc.AlignerServiceStub(channel)
        fingerprints = [
            process.engine.register(files=files, name=name).fingerprint
            for name, files in zip(["a", "b"], tiny_files, strict=True)]
        config = aligner_pb2.AlignKnowledgeRequest(config=aligner_pb2.AlignKnowledgeConfig(
            source_fingerprint=fingerprints[0], target_fingerprint=fingerprints[1], top_k=4))
        # one sends its config and then nothing (the probe's case), one sends nothing at all
        streams = [IdleStream(stub, config), IdleStream(stub)]
        assert _wait_for(lambda: all(s.code is not None for s in streams), timeout=10)
        for s in streams:
            assert s.code == grpc.StatusCode.DEADLINE_EXCEEDED, (s.code, s.details)
            assert "sent nothing for 0.5 s" in s.details
            assert "stream_idle_timeout_s" in s.details
        # both slots are free again: two more streams are admitted (and time out in turn)
        again = [IdleStream(stub), IdleStream(stub)]
        streams += again
        assert _wait_for(lambda: all(s.code is not None for s in again), timeout=10)
        assert [s.code for s in again] == [grpc.StatusCode.DEADLINE_EXCEEDED] * 2
        # and the helper threads that read those streams are gone
        assert _wait_for(lambda: not [t for t in threading.enumerate()
                                      if t.name.startswith("grpc-read-")], timeout=5)
    finally:
        for s in streams:
            s.close()
        channel.close()
        process.stop(grace=0.2)


def test_limit_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="max_streams"):
        AlignerSettings(workers=4, max_streams=5)
    with pytest.raises(ValueError, match="stream_idle_timeout_s"):
        AlignerSettings(stream_idle_timeout_s=-1)
