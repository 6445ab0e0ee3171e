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
    # the default stream cap follows a smaller worker count (the embedded run uses 4 workers)
    assert AlignerSettings(workers=4).max_streams == 4
    assert AlignerSettings().max_streams == 16


# -- 2. the DTW limit counts tokens, not characters ---------------------------------------------

# Characters from CJK Extension B: 4 UTF-8 bytes each, so 4 tokens each in a byte-level BPE that
# never saw them: 60 characters are 240 tokens per side, 57,600 DTW cells.
WIDE = "".join(chr(0x20000 + i) for i in range(60))
SMALL_DTW_LIMIT = 10_000  # > 60 x 60 (characters), < 240 x 240 (tokens)


@pytest.fixture()
def tiny_engine(tmp_path, tiny_files, monkeypatch):
    from fedmkt.align import engine as engine_module

    monkeypatch.setattr(engine_module, "MAX_DTW_CELLS", SMALL_DTW_LIMIT)
    engine = engine_module.AlignmentEngine(tmp_path)
    a, b = (engine.register(files=f, name=n) for n, f in zip("ab", tiny_files, strict=True))
    return engine, a, b


def _ref(info):
    from fedmkt.align.engine import TokenizerRefArg

    return TokenizerRefArg(fingerprint=info.fingerprint)


def test_dtw_limit_is_counted_in_tokens_for_text(tiny_engine) -> None:
    from fedmkt.errors import InvalidArgument

    engine, a, b = tiny_engine
    tok = engine.registry.get(a.fingerprint).tokenizer
    tokens = len(tok(WIDE, add_special_tokens=False).input_ids)
    assert len(WIDE) ** 2 <= SMALL_DTW_LIMIT < tokens ** 2
    with pytest.raises(InvalidArgument, match=r"240 x 240 tokens is too long for DTW.*57,600"):
        engine.align_text(_ref(a), _ref(b), WIDE)
    # the offsets method aligns the same text in linear time
    assert engine.align_text(_ref(a), _ref(b), WIDE, method="offsets").path
    # and a text within the limit is aligned by DTW
    assert engine.align_text(_ref(a), _ref(b), WIDE[:20]).path


def test_dtw_limit_holds_for_knowledge_and_the_offsets_fallback(tiny_engine) -> None:
    """Knowledge whose target text differs from the source (so offsets falls back to DTW) is
    checked as well, and the message names the sample."""
    import numpy as np

    from fedmkt.align.engine import KnowledgeConfig, TargetTokens
    from fedmkt.errors import InvalidArgument
    from fedmkt.wire.chunking import KnowledgeSample, chunk_knowledge

    engine, a, b = tiny_engine
    src_tok = engine.registry.get(a.fingerprint).tokenizer
    ids = np.asarray(src_tok(WIDE, add_special_tokens=False).input_ids, dtype=np.int32)
    rows = len(ids) - 1
    sample = KnowledgeSample(sample_id="wide-1", token_ids=ids,
                             topk_ids=((ids[1:, None] + np.arange(4)) % a.vocab_size
                                       ).astype(np.int32),
                             topk_logits=np.tile(np.float32([4, 3, 2, 1]), (rows, 1)))
    header = {"run_id": "r", "round": 0, "source": "s", "tokenizer_fingerprint": a.fingerprint,
              "top_k": 4}
    for method, target_text in [("dtw", None), ("offsets", WIDE[::-1])]:
        config = KnowledgeConfig(source_fingerprint=a.fingerprint,
                                 target_fingerprint=b.fingerprint, method=method, top_k=4)
        targets = {} if target_text is None else {"wide-1": TargetTokens(text=target_text)}
        chunks = chunk_knowledge([sample], header, logit_dtype="float32")
        with pytest.raises(InvalidArgument, match=r"sample wide-1: 240 x 240 tokens is too long"):
            list(engine.align_knowledge(config, ((c, targets) for c in chunks)))


# -- HTTP ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def http_aligner(tmp_path_factory):
    """An aligner with HTTP on and a 1 MiB message limit (HTTP body limit 4/3 MiB)."""
    process = AlignerProcess(AlignerSettings(
        grpc_port=0, http_port=0, state_dir=tmp_path_factory.mktemp("aligner-http"),
        max_message_mb=1))
    process.start()
    import socket

    def up() -> bool:
        try:
            socket.create_connection(("127.0.0.1", process.http_port), timeout=1).close()
            return True
        except OSError:
            return False

    assert _wait_for(up)
    yield process
    process.stop(grace=0.2)


@pytest.fixture(scope="module")
def http(http_aligner):
    import httpx

    with httpx.Client(base_url=f"http://127.0.0.1:{http_aligner.http_port}", timeout=30) as c:
        yield c


def _raw_request(port: int, head: bytes, body_chunks, read_timeout: float = 5.0) -> bytes:
    """Send ``head`` and then ``body_chunks`` from a thread (the server may stop reading), and
    return what the server answers within ``read_timeout`` seconds."""
    import socket

    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(read_timeout)

    def sender():
        try:
            sock.sendall(head)
            for chunk in body_chunks:
                sock.sendall(chunk)
        except OSError:
            pass

    threading.Thread(target=sender, daemon=True).start()
    answer = b""
    try:
        while b"\r\n\r\n" not in answer or not _complete(answer):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    except TimeoutError:
        pass
    finally:
        sock.close()
    return answer


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def test_chunked_body_over_the_limit_is_refused_while_it_is_read(http_aligner) -> None:
    """No Content-Length: the 413 comes once the limit is passed, without waiting for (or
    reading) the rest of a body that never ends."""
    import json

    limit = (http_aligner.settings.max_message_mb << 20) * 4 // 3
    piece = b"x" * (64 << 10)
    sent_chunks = (limit // len(piece)) + 4  # a little over the limit, then silence

    def chunks():
        for _ in range(sent_chunks):
            yield b"%x\r\n%s\r\n" % (len(piece), piece)
        time.sleep(30)  # the body never ends

    head = (b"POST /v1/tokenizers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    started = time.monotonic()
    answer = _raw_request(http_aligner.http_port, head, chunks())
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert time.monotonic() - started < 5
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert body["error"]["code"] == "RESOURCE_EXHAUSTED"
    assert "max_message_mb" in body["error"]["message"]


# -- 4. no Nagle stall on keep-alive connections ------------------------------------------------

def test_http_connections_have_tcp_nodelay_and_answer_fast(http_aligner, http) -> None:
    import socket
    import statistics

    timings = []
    for _ in range(15):  # one keep-alive connection
        started = time.perf_counter()
        assert http.get("/healthz").status_code == 200
        timings.append(time.perf_counter() - started)
    connections = http_aligner.http_server.server_state.connections
    assert connections
    for protocol in connections:
        sock = protocol.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), "Nagle is on"
    # Nagle + delayed ACK cost ~40 ms a request; without them a health check takes ~1 ms
    assert statistics.median(timings[1:]) < 0.02, timings


# -- 5. /metrics stays bounded ------------------------------------------------------------------

def _http_series(http) -> set[tuple[str, str]]:
    import re

    text = http.get("/metrics").text
    return set(re.findall(r'^fedmkt_http_requests_total\{path="([^"]*)",status="(\d+)"\}',
                          text, flags=re.M))


def test_metrics_are_labelled_by_route_template(http_aligner, http) -> None:
    import secrets

    for _ in range(30):
        http.get(f"/no/such/{secrets.token_hex(8)}")
        http.get(f"/v1/tokenizers/{secrets.token_hex(32)}")
        http.delete(f"/v1/tokenizers/{secrets.token_hex(32)}")  # 405: the path matches a route
    series = _http_series(http)
    paths = {p for p, _ in series}
    templates = {r.path for r in http_aligner.http_server.config.app.routes}
    assert paths <= templates | {"unmatched"}, paths - templates
    assert {"unmatched", "/v1/tokenizers/{fingerprint}"} <= paths
    before = len(_http_series(http))  # now with /metrics itself
    for _ in range(30):
        http.get(f"/v1/{secrets.token_hex(8)}")
    assert len(_http_series(http)) == before  # more unknown paths add no series


# -- 6. what the aligner emits, it accepts --------------------------------------------------------

def _knowledge_sample(tokenizer, text: str, sample_id: str, k: int = 4, top: float = 4.0):
    import numpy as np

    from fedmkt.wire.chunking import KnowledgeSample

    ids = np.asarray(tokenizer(text, add_special_tokens=False).input_ids, dtype=np.int32)
    rows = len(ids) - 1
    vocab = len(tokenizer)
    topk = ((ids[1:, None] + np.arange(k)) % vocab).astype(np.int32)
    logits = np.tile(np.linspace(top, 0, k, dtype=np.float32), (rows, 1))
    return KnowledgeSample(sample_id=sample_id, token_ids=ids, topk_ids=topk, topk_logits=logits)


def test_logits_beyond_the_output_dtype_are_refused_not_emitted_as_inf(tiny_engine) -> None:
    from fedmkt.align.engine import KnowledgeConfig
    from fedmkt.errors import InvalidArgument
    from fedmkt.wire.chunking import chunk_knowledge
    from fedmkt.wire.validate import decode_chunk

    engine, a, b = tiny_engine
    tok = engine.registry.get(a.fingerprint).tokenizer
    sample = _knowledge_sample(tok, "the quick brown fox", "big", top=1e5)  # > float16 max
    header = {"run_id": "r", "round": 0, "source": "s", "tokenizer_fingerprint": a.fingerprint,
              "top_k": 4}

    def run(dtype: str):
        config = KnowledgeConfig(source_fingerprint=a.fingerprint,
                                 target_fingerprint=b.fingerprint, top_k=4, logit_dtype=dtype)
        chunks = chunk_knowledge([sample], header, logit_dtype="float32")
        return list(engine.align_knowledge(config, ((c, {}) for c in chunks)))

    with pytest.raises(InvalidArgument, match=r"sample big: logit 100000 does not fit the "
                                              r"float16 output.*float32"):
        run("float16")
    # float32 output holds it, and what comes out is valid input for the next receiver
    for chunk in run("float32"):
        decode_chunk(chunk, vocab_size=b.vocab_size, fingerprint=b.fingerprint)


@pytest.fixture(scope="module")
def tiny_http(http, tiny_files) -> tuple[str, str]:
    import base64

    fingerprints = []
    for name, files in zip(["tiny-a", "tiny-b"], tiny_files, strict=True):
        reply = http.post("/v1/tokenizers", json={
            "name": name, "files": {k: base64.b64encode(v).decode() for k, v in files.items()}})
        assert reply.status_code == 200, reply.text
        fingerprints.append(reply.json()["fingerprint"])
    return fingerprints[0], fingerprints[1]


def test_http_knowledge_output_posts_back_as_input(http, tiny_http, tiny_files) -> None:
    import json
    import math

    from transformers import PreTrainedTokenizerFast

    src, tgt = tiny_http
    with tempfile.TemporaryDirectory() as folder:
        for name, content in tiny_files[0].items():
            (Path(folder) / name).write_bytes(content)
        tok = PreTrainedTokenizerFast.from_pretrained(folder)
    sample = _knowledge_sample(tok, "the quick brown fox jumps over the lazy dog", "q1")
    body = {"source_fingerprint": src, "target_fingerprint": tgt, "top_k": 4,
            "samples": [{"sample_id": "q1", "token_ids": sample.token_ids.tolist(),
                         "topk_ids": sample.topk_ids.tolist(),
                         "topk_logits": sample.topk_logits.tolist(), "loss": 1.25}]}
    reply = http.post("/v1/align-knowledge", json=body)
    assert reply.status_code == 200, reply.text
    out = reply.json()["samples"][0]
    assert any(i < 0 for row in out["topk_ids"] for i in row)  # there are padding slots
    logits = [x for row in out["topk_logits"] for x in row]
    assert all(isinstance(x, float) and math.isfinite(x) for x in logits)
    assert "Infinity" not in reply.text and "NaN" not in reply.text
    json.loads(reply.text, parse_constant=lambda c: pytest.fail(f"{c} in the output"))
    assert out["loss"] == 1.25
    # the output, sent back the other way, is accepted
    back = {"source_fingerprint": tgt, "target_fingerprint": src, "top_k": 4,
            "samples": [{k: out[k] for k in ("sample_id", "token_ids", "topk_ids",
                                             "topk_logits", "position_start", "loss")}]}
    again = http.post("/v1/align-knowledge", json=back)
    assert again.status_code == 200, again.text


def test_http_logits_beyond_float32_are_refused_with_the_field(http, tiny_http) -> None:
    src, tgt = tiny_http
    reply = http.post("/v1/align-knowledge", json={
        "source_fingerprint": src, "target_fingerprint": tgt,
        "samples": [{"sample_id": "s", "token_ids": [1, 2], "topk_ids": [[2]],
                     "topk_logits": [[1e39]]}]})
    assert reply.status_code == 400
    assert "s.topk_logits" in reply.json()["error"]["message"]
    assert "float32" in reply.json()["error"]["message"]


# -- 7. one error shape, and OpenAPI that says so ------------------------------------------------

def _error_of(reply, status: int) -> dict:
    assert reply.status_code == status, (reply.status_code, reply.text)
    body = reply.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"]
    return body["error"]


def test_every_error_has_the_one_shape(http) -> None:
    assert _error_of(http.get("/no/such/path"), 404)["code"] == "NOT_FOUND"
    error = _error_of(http.delete("/v1/tokenizers"), 405)
    assert "DELETE" in error["message"] and "GET" in error["message"]
    error = _error_of(http.post("/v1/align-text", content=b"{not json",
                                headers={"content-type": "application/json"}), 400)
    assert error["code"] == "INVALID_ARGUMENT" and "JSON" in error["message"]
    error = _error_of(http.post("/v1/align-text", json={"text": 5}), 400)
    assert "source" in error["message"] and "text" in error["message"]
    assert _error_of(http.get(f"/v1/tokenizers/{'0' * 64}"), 404)["code"] == "NOT_FOUND"
    assert _error_of(http.get("/v1/tokenizers/nothex"), 400)["code"] == "INVALID_ARGUMENT"
    assert _error_of(http.get("/docs"), 404)["code"] == "NOT_FOUND"  # docs are off


def test_openapi_declares_what_the_service_sends(http) -> None:
    schema = http.get("/openapi.json").json()
    assert "/docs" in schema["info"]["description"]  # says the docs pages are off, and why
    components = schema["components"]["schemas"]
    assert "HTTPValidationError" not in components and "ErrorResponse" in components
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" not in responses, (method, path)
            for status, response in responses.items():
                content = response.get("content", {})
                if status == "200":
                    ok = next(iter(content.values()))["schema"]
                    assert ok.get("$ref") or ok.get("type") == "string", (method, path, ok)
                else:
                    assert content["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/ErrorResponse"}, (method, path, status)
            if "requestBody" in operation:
                assert "400" in responses and "413" in responses, (method, path)


# -- 8. errors that say what to fix ---------------------------------------------------------------

def test_garbage_protobuf_is_invalid_argument_naming_the_message(tmp_path) -> None:
    process, channel = _start(tmp_path)
    try:
        garbage = b"\x0a\xff\xff\xff\x0f"  # field 1, a length far past the end
        unary = channel.unary_unary("/fedmkt.v1.AlignerService/AlignText")
        with pytest.raises(grpc.RpcError) as info:
            unary(garbage, timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "fedmkt.v1.AlignTextRequest" in info.value.details()
        stream = channel.stream_stream("/fedmkt.v1.AlignerService/AlignKnowledge")
        with pytest.raises(grpc.RpcError) as info:
            list(stream(iter([garbage]), timeout=5))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "message 0 of the stream" in info.value.details()
        assert "fedmkt.v1.AlignKnowledgeRequest" in info.value.details()
        # still serving
        stub = aligner_pb2_grpc.AlignerServiceStub(channel)
        stub.ListTokenizers(aligner_pb2.ListTokenizersRequest(), timeout=5)
    finally:
        channel.close()
        process.stop(grace=0.2)


def test_http_out_of_range_integers_name_the_field(http, tiny_http) -> None:
    src, tgt = tiny_http
    sample = {"sample_id": "s", "token_ids": [1, 2], "topk_ids": [[2]], "topk_logits": [[1.0]]}
    base = {"source_fingerprint": src, "target_fingerprint": tgt}
    error = _error_of(http.post("/v1/align-knowledge",
                                json={**base, "round": 2**40, "samples": [sample]}), 400)
    assert "round" in error["message"] and "2147483647" in error["message"]
    error = _error_of(http.post("/v1/align-knowledge", json={
        **base, "samples": [{**sample, "position_start": 2**40}]}), 400)
    assert "samples.0.position_start" in error["message"]
    error = _error_of(http.post("/v1/align-knowledge", json={
        **base, "samples": [{**sample, "token_ids": [1, 2**40]}]}), 400)
    assert "s.token_ids" in error["message"]


def test_http_too_large_sample_names_the_real_limit(http, tiny_http) -> None:
    from fedmkt.align.engine import MAX_POSITIONS

    src, tgt = tiny_http
    tokens = [1] * 270_000  # > 1 MiB of int32 ids: more than one chunk part can hold
    error = _error_of(http.post("/v1/align-knowledge", json={
        "source_fingerprint": src, "target_fingerprint": tgt,
        "samples": [{"sample_id": "s", "token_ids": tokens, "topk_ids": [[2]],
                     "topk_logits": [[1.0]]}]}), 400)
    assert "max_bytes" not in error["message"]
    assert "token_ids" in error["message"] and str(MAX_POSITIONS + 1) in error["message"]


def test_registering_known_files_under_another_label_is_refused(tmp_path, tiny_files) -> None:
    from fedmkt.wire.v1 import tokenizer_pb2

    process, channel = _start(tmp_path)
    try:
        stub = aligner_pb2_grpc.AlignerServiceStub(channel)
        files = [tokenizer_pb2.TokenizerFile(name=k, content=v) for k, v in tiny_files[0].items()]
        first = stub.RegisterTokenizer(aligner_pb2.RegisterTokenizerRequest(name="alpha",
                                                                            files=files))
        assert first.name == "alpha"
        with pytest.raises(grpc.RpcError) as info:
            stub.RegisterTokenizer(aligner_pb2.RegisterTokenizerRequest(name="beta", files=files))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "already registered as 'alpha'" in info.value.details()
        # the same label, or none, is idempotent and answers with the label kept
        for name in ["alpha", ""]:
            again = stub.RegisterTokenizer(aligner_pb2.RegisterTokenizerRequest(name=name,
                                                                                files=files))
            assert (again.fingerprint, again.name) == (first.fingerprint, "alpha")
    finally:
        channel.close()
        process.stop(grace=0.2)


def test_http_reregistration_under_another_label_is_409(http, tiny_http, tiny_files) -> None:
    import base64

    files = {k: base64.b64encode(v).decode() for k, v in tiny_files[0].items()}
    error = _error_of(http.post("/v1/tokenizers", json={"name": "other", "files": files}), 409)
    assert error["code"] == "FAILED_PRECONDITION" and "'tiny-a'" in error["message"]


def test_target_tokens_for_unknown_samples_are_refused(tiny_engine) -> None:
    import numpy as np

    from fedmkt.align.engine import KnowledgeConfig, TargetTokens
    from fedmkt.errors import InvalidArgument
    from fedmkt.wire.chunking import chunk_knowledge

    engine, a, b = tiny_engine
    tok = engine.registry.get(a.fingerprint).tokenizer
    sample = _knowledge_sample(tok, "the quick brown fox", "known")
    header = {"run_id": "r", "round": 0, "source": "s", "tokenizer_fingerprint": a.fingerprint,
              "top_k": 4}
    config = KnowledgeConfig(source_fingerprint=a.fingerprint, target_fingerprint=b.fingerprint,
                             top_k=4)
    targets = {"known": TargetTokens(text="the quick brown fox"),
               "typo": TargetTokens(token_ids=np.asarray([1, 2], dtype=np.int32))}
    chunks = chunk_knowledge([sample], header, logit_dtype="float32")
    with pytest.raises(InvalidArgument, match=r"sample 'typo', which is not a sample"):
        list(engine.align_knowledge(config, ((c, targets) for c in chunks)))
    chunks = chunk_knowledge([sample], header, logit_dtype="float32")
    assert list(engine.align_knowledge(config, ((c, {"known": targets["known"]})
                                               for c in chunks)))


def test_uploaded_tokenizers_are_capped(tmp_path, tiny_files) -> None:
    from fedmkt.align.engine import AlignmentEngine
    from fedmkt.errors import ResourceExhausted

    engine = AlignmentEngine(tmp_path, max_tokenizers=1)
    first = engine.register(files=tiny_files[0], name="a")
    with pytest.raises(ResourceExhausted, match=r"holds 1 uploaded tokenizers.*max_tokenizers"):
        engine.register(files=tiny_files[1], name="b")
    assert engine.register(files=tiny_files[0]).fingerprint == first.fingerprint  # known: fine
    assert engine.register(builtin="gpt2").vocab_size == 50257  # builtins do not count
    assert AlignerSettings(max_tokenizers=3).max_tokenizers == 3
    with pytest.raises(ValueError, match="max_tokenizers"):
        AlignerSettings(max_tokenizers=0)
