"""The aligner as a service: gRPC and HTTP over loopback, good and bad requests."""

from __future__ import annotations

import base64
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from fedmkt.models.tokenizers import load_tokenizer, tokenizer_path
from fedmkt.wire import codec
from fedmkt.wire.chunking import KnowledgeSample, chunk_knowledge
from fedmkt.wire.v1 import aligner_pb2, aligner_pb2_grpc, tokenizer_pb2
from services.aligner.main import AlignerProcess
from services.settings import AlignerSettings

ROOT = Path(__file__).resolve().parent.parent
TEXT = "The quick brown fox jumps over the lazy dog.\nNaïve café: 3.50 € — done!"


@pytest.fixture(scope="module")
def aligner(tmp_path_factory):
    state = tmp_path_factory.mktemp("aligner-state")
    settings = AlignerSettings(host="127.0.0.1", grpc_port=0, http_port=0, state_dir=state,
                               max_message_mb=16)
    process = AlignerProcess(settings)
    process.start()
    channel = grpc.insecure_channel(
        f"127.0.0.1:{process.grpc_port}",
        options=[("grpc.max_send_message_length", 64 << 20)],
    )
    yield process, channel
    channel.close()
    process.stop(grace=0.5)


@pytest.fixture(scope="module")
def stub(aligner):
    return aligner_pb2_grpc.AlignerServiceStub(aligner[1])


@pytest.fixture(scope="module")
def http(aligner):
    with httpx.Client(base_url=f"http://127.0.0.1:{aligner[0].http_port}", timeout=120) as c:
        yield c


def builtin(name: str) -> tokenizer_pb2.TokenizerRef:
    return tokenizer_pb2.TokenizerRef(builtin=name)


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_health_and_reflection(aligner) -> None:
    channel = aligner[1]
    health = health_pb2_grpc.HealthStub(channel)
    for service in ["", "fedmkt.v1.AlignerService"]:
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = list(refl.ServerReflectionInfo(iter([
        reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in answers[0].list_services_response.service}
    assert "fedmkt.v1.AlignerService" in names and "grpc.health.v1.Health" in names


def test_register_by_files_matches_builtin(stub) -> None:
    folder = tokenizer_path("gpt2")
    files = [tokenizer_pb2.TokenizerFile(name=p.name, content=p.read_bytes())
             for p in sorted(folder.iterdir()) if p.is_file()]
    by_files = stub.RegisterTokenizer(aligner_pb2.RegisterTokenizerRequest(name="my-gpt2",
                                                                           files=files))
    by_name = stub.RegisterTokenizer(aligner_pb2.RegisterTokenizerRequest(builtin="gpt2"))
    assert by_files.fingerprint == by_name.fingerprint
    assert len(by_files.fingerprint) == 64
    assert by_files.vocab_size == 50257
    assert by_files.word_boundary_marker == "Ġ"
    again = stub.GetTokenizer(aligner_pb2.GetTokenizerRequest(
        tokenizer=tokenizer_pb2.TokenizerRef(fingerprint=by_files.fingerprint)))
    assert again.vocab_size == 50257
    listed = stub.ListTokenizers(aligner_pb2.ListTokenizersRequest())
    assert by_files.fingerprint in {t.fingerprint for t in listed.tokenizers}


def test_bad_registrations_are_rejected_and_service_keeps_serving(stub) -> None:
    bad_name = aligner_pb2.RegisterTokenizerRequest(
        files=[tokenizer_pb2.TokenizerFile(name="../evil.json", content=b"{}")])
    assert code_of(lambda: stub.RegisterTokenizer(bad_name)) == grpc.StatusCode.INVALID_ARGUMENT
    garbage = aligner_pb2.RegisterTokenizerRequest(
        files=[tokenizer_pb2.TokenizerFile(name="tokenizer.json", content=b"not json")])
    assert code_of(lambda: stub.RegisterTokenizer(garbage)) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: stub.RegisterTokenizer(aligner_pb2.RegisterTokenizerRequest())) == \
        grpc.StatusCode.INVALID_ARGUMENT
    unknown = aligner_pb2.RegisterTokenizerRequest(builtin="no-such")
    assert code_of(lambda: stub.RegisterTokenizer(unknown)) == grpc.StatusCode.NOT_FOUND
    missing = aligner_pb2.GetTokenizerRequest(
        tokenizer=tokenizer_pb2.TokenizerRef(fingerprint="0" * 64))
    assert code_of(lambda: stub.GetTokenizer(missing)) == grpc.StatusCode.NOT_FOUND
    traversal = aligner_pb2.GetTokenizerRequest(
        tokenizer=tokenizer_pb2.TokenizerRef(fingerprint="../../etc"))
    assert code_of(lambda: stub.GetTokenizer(traversal)) == grpc.StatusCode.INVALID_ARGUMENT
    too_big = aligner_pb2.RegisterTokenizerRequest(
        files=[tokenizer_pb2.TokenizerFile(name="tokenizer.json", content=b"x" * (17 << 20))])
    assert code_of(lambda: stub.RegisterTokenizer(too_big)) == \
        grpc.StatusCode.RESOURCE_EXHAUSTED
    # still serving
    ok = stub.GetTokenizer(aligner_pb2.GetTokenizerRequest(tokenizer=builtin("gpt2")))
    assert ok.vocab_size == 50257


def test_vocab_map_is_cached_and_consistent(stub) -> None:
    request = aligner_pb2.GetVocabMapRequest(source=builtin("neox"), target=builtin("gpt2"))
    first = stub.GetVocabMap(request)
    second = stub.GetVocabMap(request)
    assert second.from_cache
    a = codec.decode(first.source_to_target)
    b = codec.decode(second.source_to_target)
    assert a.shape == (50280,) and np.array_equal(a, b)
    assert a.min() >= 0 and a.max() < 50257
    neox, gpt2 = load_tokenizer("neox"), load_tokenizer("gpt2")
    hello = neox.convert_tokens_to_ids("Ġhello")
    assert gpt2.convert_ids_to_tokens(int(a[hello])) == "Ġhello"
    assert 30_000 < first.exact_matches < 50_280


def test_align_text(stub) -> None:
    reply = stub.AlignText(aligner_pb2.AlignTextRequest(
        source=builtin("mistral"), target=builtin("gpt2"), text=TEXT))
    assert reply.source_ids and reply.target_ids
    pairs = [(p.source_index, p.target_index) for p in reply.pairs]
    assert pairs[0] == (0, 0)
    assert pairs[-1] == (len(reply.source_ids) - 1, len(reply.target_ids) - 1)
    assert all(b[0] >= a[0] and b[1] >= a[1] for a, b in zip(pairs, pairs[1:], strict=False))
    assert "".join(reply.target_tokens) == TEXT
    bad_mode = aligner_pb2.AlignTextRequest(source=builtin("mistral"), target=builtin("gpt2"),
                                            text="x", canonical=7)
    assert code_of(lambda: stub.AlignText(bad_mode)) == grpc.StatusCode.INVALID_ARGUMENT
    no_target = aligner_pb2.AlignTextRequest(source=builtin("mistral"), text="x")
    assert code_of(lambda: stub.AlignText(no_target)) == grpc.StatusCode.INVALID_ARGUMENT


def _teacher_knowledge(text: str, k: int = 8):
    """Mistral-side knowledge: the true next token first, then k-1 other ids."""
    tok = load_tokenizer("mistral")
    ids = np.asarray(tok(text, add_special_tokens=False).input_ids, dtype=np.int32)
    rows = len(ids) - 1
    rng = np.random.default_rng(0)
    topk = rng.integers(100, len(tok), size=(rows, k), dtype=np.int32)
    topk[:, 0] = ids[1:]
    logits = np.tile(np.linspace(5, 0, k, dtype=np.float32), (rows, 1))
    return ids, topk, logits


def _fingerprints(stub) -> tuple[str, str]:
    src = stub.RegisterTokenizer(aligner_pb2.RegisterTokenizerRequest(builtin="mistral"))
    tgt = stub.RegisterTokenizer(aligner_pb2.RegisterTokenizerRequest(builtin="gpt2"))
    return src.fingerprint, tgt.fingerprint


def _requests(src_fp, tgt_fp, samples, k, targets=None, header_overrides=None):
    yield aligner_pb2.AlignKnowledgeRequest(config=aligner_pb2.AlignKnowledgeConfig(
        source_fingerprint=src_fp, target_fingerprint=tgt_fp, top_k=k))
    header = {"run_id": "run-1", "round": 1, "source": "server",
              "tokenizer_fingerprint": src_fp, "top_k": k, **(header_overrides or {})}
    by_id = {t.sample_id: t for t in targets or []}
    for chunk in chunk_knowledge(samples, header, logit_dtype="float16", max_bytes=4096):
        # as the contract says: targets travel with the chunk that holds a sample's first part
        firsts = [by_id[s.sample_id] for s in chunk.samples
                  if s.part_index == 0 and s.sample_id in by_id]
        yield aligner_pb2.AlignKnowledgeRequest(
            batch=aligner_pb2.AlignKnowledgeBatch(chunk=chunk, targets=firsts))


def test_align_knowledge_stream(stub) -> None:
    src_fp, tgt_fp = _fingerprints(stub)
    gpt2 = load_tokenizer("gpt2")
    samples, targets = [], []
    for n, text in enumerate([TEXT, "Question: is the sky blue?\nAnswer: yes"]):
        ids, topk, logits = _teacher_knowledge(text)
        samples.append(KnowledgeSample(sample_id=f"s{n}", token_ids=ids, topk_ids=topk,
                                       topk_logits=logits, loss=1.5 + n))
        t_ids = np.asarray(gpt2(text).input_ids, dtype=np.int32)
        targets.append(aligner_pb2.TargetTokens(sample_id=f"s{n}", token_ids=codec.encode(t_ids)))
    # a long sample, split into parts by the 4 KiB chunk limit: its target ids (given with the
    # first part, ending in an end-of-text token) must be used when its last part arrives
    long_text = " ".join([TEXT] * 6)
    ids, topk, logits = _teacher_knowledge(long_text)
    samples.append(KnowledgeSample(sample_id="long", token_ids=ids, topk_ids=topk,
                                   topk_logits=logits))
    long_target = np.asarray(gpt2(long_text).input_ids + [gpt2.eos_token_id], dtype=np.int32)
    targets.append(aligner_pb2.TargetTokens(sample_id="long", token_ids=codec.encode(long_target)))
    # and one without target ids: the aligner re-tokenizes the decoded text
    ids, topk, logits = _teacher_knowledge(long_text)
    samples.append(KnowledgeSample(sample_id="retok", token_ids=ids, topk_ids=topk,
                                   topk_logits=logits))
    out = [r.chunk for r in stub.AlignKnowledge(_requests(src_fp, tgt_fp, samples, 8, targets))]
    got = {}
    for chunk in out:
        assert chunk.header.tokenizer_fingerprint == tgt_fp
        assert chunk.header.run_id == "run-1" and chunk.header.source == "server"
        for s in chunk.samples:
            got.setdefault(s.sample_id, []).append(s)
    assert set(got) == {"s0", "s1", "long", "retok"}
    sent_parts = [s for r in _requests(src_fp, tgt_fp, samples, 8, targets)
                  if r.HasField("batch") for s in r.batch.chunk.samples if s.sample_id == "long"]
    assert len(sent_parts) > 1  # it really travelled in several parts
    first = got["s0"][0]
    t_ids = codec.decode(first.token_ids)
    assert np.array_equal(t_ids, gpt2(TEXT).input_ids)
    rows = codec.decode(first.topk_ids)
    assert rows.shape == (len(t_ids) - 1, 8)
    assert first.stats.positions == len(t_ids) - 1
    assert first.stats.aligned + first.stats.fallback == first.stats.positions
    assert first.stats.aligned > 0.6 * first.stats.positions
    # every projected row has the student's true next token first (teacher was sure of it)
    assert np.array_equal(rows[:, 0], t_ids[1:])
    assert math.isclose(first.loss, 1.5)
    assert np.array_equal(codec.decode(got["long"][0].token_ids), long_target)
    long_rows = sum(codec.decode(p.topk_ids).shape[0] for p in got["long"])
    assert long_rows == len(long_target) - 1
    retok_rows = sum(codec.decode(p.topk_ids).shape[0] for p in got["retok"])
    assert retok_rows == len(gpt2(long_text, add_special_tokens=False).input_ids) - 1


def test_align_knowledge_rejects_bad_streams(stub) -> None:
    src_fp, tgt_fp = _fingerprints(stub)
    ids, topk, logits = _teacher_knowledge(TEXT)
    good = KnowledgeSample(sample_id="a", token_ids=ids, topk_ids=topk, topk_logits=logits)

    def run(requests):
        return code_of(lambda: list(stub.AlignKnowledge(requests)))

    # first message not a config
    batch_first = list(_requests(src_fp, tgt_fp, [good], 8))[1:]
    assert run(iter(batch_first)) == grpc.StatusCode.INVALID_ARGUMENT
    # chunk in another tokenizer than configured
    assert run(_requests(src_fp, tgt_fp, [good], 8,
                         header_overrides={"tokenizer_fingerprint": tgt_fp})) == \
        grpc.StatusCode.FAILED_PRECONDITION
    # ids beyond the source vocabulary
    bad_ids = topk.copy()
    bad_ids[0, 3] = 32000
    sample = KnowledgeSample(sample_id="a", token_ids=ids, topk_ids=bad_ids, topk_logits=logits)
    assert run(_requests(src_fp, tgt_fp, [sample], 8)) == grpc.StatusCode.INVALID_ARGUMENT
    # non-finite logits
    nan_logits = logits.copy()
    nan_logits[1, 0] = np.nan
    request = list(_requests(src_fp, tgt_fp, [good], 8))
    request[1].batch.chunk.samples[0].topk_logits.CopyFrom(codec.encode(nan_logits, "float16"))
    assert run(iter(request)) == grpc.StatusCode.INVALID_ARGUMENT
    # unknown target fingerprint
    assert run(_requests(src_fp, "f" * 64, [good], 8)) == grpc.StatusCode.NOT_FOUND
    # target ids out of range
    bad_target = [aligner_pb2.TargetTokens(
        sample_id="a", token_ids=codec.encode(np.asarray([1, 60000], dtype=np.int32)))]
    assert run(_requests(src_fp, tgt_fp, [good], 8, bad_target)) == \
        grpc.StatusCode.INVALID_ARGUMENT
    # a truncated tensor (byte length does not match the shape)
    request = list(_requests(src_fp, tgt_fp, [good], 8))
    request[1].batch.chunk.samples[0].topk_ids.data = b"\x00" * 12
    assert run(iter(request)) == grpc.StatusCode.INVALID_ARGUMENT
    # and the service still serves a good stream afterwards
    assert list(stub.AlignKnowledge(_requests(src_fp, tgt_fp, [good], 8)))


def test_oversized_message_is_refused(aligner) -> None:
    channel = aligner[1]
    stub = aligner_pb2_grpc.AlignerServiceStub(channel)
    huge = aligner_pb2.AlignTextRequest(source=builtin("gpt2"), target=builtin("neox"),
                                        text="a" * (17 << 20))
    assert code_of(lambda: stub.AlignText(huge)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stub.GetTokenizer(aligner_pb2.GetTokenizerRequest(tokenizer=builtin("gpt2")))


# -- HTTP/JSON --------------------------------------------------------------------------------

def test_http_health_metrics_and_alignment(http) -> None:
    assert http.get("/healthz").json() == {"status": "SERVING"}
    reply = http.post("/v1/align-text", json={"source": {"builtin": "mistral"},
                                              "target": {"builtin": "gpt2"}, "text": TEXT})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert "".join(body["target_tokens"]) == TEXT
    assert body["pairs"][0] == [0, 0]
    metrics = http.get("/metrics").text
    assert "fedmkt_http_requests_total" in metrics and "fedmkt_rpc_total" in metrics


def test_http_register_vocab_map_and_knowledge(http) -> None:
    folder = tokenizer_path("neox")
    files = {p.name: base64.b64encode(p.read_bytes()).decode() for p in folder.iterdir()
             if p.is_file()}
    # the builtin neox may be registered already: the same files keep that label (another
    # label would be refused, tests/test_aligner_hardening.py)
    info = http.post("/v1/tokenizers", json={"name": "neox", "files": files}).json()
    assert info["vocab_size"] == 50280
    assert http.get(f"/v1/tokenizers/{info['fingerprint']}").json()["name"] == "neox"
    vmap = http.post("/v1/vocab-map", json={"source": {"fingerprint": info["fingerprint"]},
                                            "target": {"builtin": "gpt2"}}).json()
    assert len(vmap["source_to_target"]) == 50280
    gpt2 = http.post("/v1/tokenizers", json={"builtin": "gpt2"}).json()
    neox = load_tokenizer("neox")
    ids = neox("Is the sky blue? yes", add_special_tokens=False).input_ids
    k = 4
    topk = [[ids[i + 1], 5, 6, 7] for i in range(len(ids) - 1)]
    logits = [[4.0, 3.0, 2.0, 1.0]] * (len(ids) - 1)
    reply = http.post("/v1/align-knowledge", json={
        "source_fingerprint": info["fingerprint"], "target_fingerprint": gpt2["fingerprint"],
        "top_k": k,
        "samples": [{"sample_id": "q1", "token_ids": ids, "topk_ids": topk,
                     "topk_logits": logits}],
    })
    assert reply.status_code == 200, reply.text
    sample = reply.json()["samples"][0]
    assert sample["stats"]["positions"] == len(sample["token_ids"]) - 1
    assert sample["stats"]["aligned"] > 0


def test_http_errors_are_4xx_with_a_message(http) -> None:
    r = http.post("/v1/align-text", json={"source": {"builtin": "mistral"}, "text": "x"})
    assert r.status_code == 400 and "target" in r.json()["error"]["message"]
    r = http.post("/v1/align-text", content=b"{not json", headers={"content-type":
                                                                     "application/json"})
    assert r.status_code == 400
    r = http.post("/v1/align-text", json={"source": {"builtin": "nope"},
                                          "target": {"builtin": "gpt2"}, "text": "x"})
    assert r.status_code == 404 and "nope" in r.json()["error"]["message"]
    r = http.post("/v1/align-text", json={"source": {"builtin": "gpt2", "fingerprint": "a"},
                                          "target": {"builtin": "gpt2"}, "text": "x"})
    assert r.status_code == 400 and "exactly one" in r.json()["error"]["message"]
    r = http.get(f"/v1/tokenizers/{'0' * 64}")
    assert r.status_code == 404
    r = http.post("/v1/tokenizers", json={"files": {"tokenizer.json": "%%%"}})
    assert r.status_code == 400 and "base64" in r.json()["error"]["message"]
    r = http.post("/v1/tokenizers", content=b"x" * (23 << 20),
                  headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    assert http.get("/healthz").status_code == 200


def test_client_that_knows_only_the_proto(aligner, tmp_path) -> None:
    """Compile proto/ afresh into an empty folder and call the service with those stubs only."""
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from grpc_tools import protoc
        out = Path({str(tmp_path)!r})
        protos = sorted(str(p.relative_to({str(ROOT / 'proto')!r}))
                        for p in Path({str(ROOT / 'proto')!r}).rglob('*.proto'))
        assert protoc.main(['protoc', '-I{ROOT / 'proto'}', f'--python_out={{out}}',
                            f'--grpc_python_out={{out}}', *protos]) == 0
        for d in [out / 'fedmkt', out / 'fedmkt' / 'v1']:
            (d / '__init__.py').write_text('')
        sys.path.insert(0, str(out))
        import grpc
        from fedmkt.v1 import aligner_pb2, aligner_pb2_grpc, tokenizer_pb2
        import fedmkt.v1 as generated
        assert str(out) in generated.__file__, generated.__file__
        stub = aligner_pb2_grpc.AlignerServiceStub(
            grpc.insecure_channel('127.0.0.1:{aligner[0].grpc_port}'))
        reply = stub.AlignText(aligner_pb2.AlignTextRequest(
            source=tokenizer_pb2.TokenizerRef(builtin='gpt2'),
            target=tokenizer_pb2.TokenizerRef(builtin='neox'), text='hello world'))
        print(len(reply.pairs), ''.join(reply.target_tokens))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("hello world")
