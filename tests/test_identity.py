"""mTLS and identity (issue 10, part 5): with ``tls_client_ca`` set, a service admits only
certificates from the federation's CA that are in date, and each call is checked against the
identity its certificate names (``services.identity.RULES``): nobody sends knowledge, fetches
or pushes an adapter, or registers a tokenizer as someone else.

Every certificate comes from ``services.certs`` (``fedmkt certs``) in a tmp folder. The servers
are the real aligner process (tiny in-memory tokenizers) and the real participant process
around a fake core that records what reaches it; each test takes a second or two.
"""

from __future__ import annotations

import datetime
import threading
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_aligner_hardening import tiny_tokenizer_files

from fedmkt.config import TlsConfig
from fedmkt.errors import NotFound
from fedmkt.wire.v1 import (
    aligner_pb2,
    aligner_pb2_grpc,
    knowledge_pb2,
    participant_pb2,
    participant_pb2_grpc,
)
from services.aligner.main import AlignerProcess
from services.certs import cert_pem, issue, key_pem, make_certs, write_file
from services.controller.clients import open_channel
from services.identity import IdentityPolicy, check_allow, identity_of_name
from services.participant.main import ParticipantProcess
from services.settings import AlignerSettings, ParticipantSettings, SettingsError, load_settings

NAMES = ["aligner", "controller", "run", "llm", "client-1", "client-2"]
PD = grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("certs")
    make_certs(folder, NAMES)
    # another CA's certificate for the controller: the right name from the wrong CA
    make_certs(folder / "rogue", ["controller", "llm"])
    # our CA, the controller's name, out of date
    from cryptography.hazmat.primitives import serialization

    ca = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((folder / "ca-key.pem").read_bytes(), None)
    now = datetime.datetime.now(datetime.UTC)
    cert, key = issue(ca, ca_key, "controller", not_before=now - datetime.timedelta(days=10),
                      not_after=now - datetime.timedelta(days=1))
    (folder / "expired").mkdir()
    write_file(folder / "expired" / "controller.pem", cert_pem(cert), 0o644)
    write_file(folder / "expired" / "controller-key.pem", key_pem(key), 0o600)
    # our CA, CN=controller but no fedmkt identity (a certificate from someone else's tool)
    key = ec.generate_private_key(ec.SECP256R1())
    bare = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "controller")]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("controller")]), False)
            .sign(ca_key, hashes.SHA256()))
    (folder / "bare").mkdir()
    write_file(folder / "bare" / "controller.pem", cert_pem(bare), 0o644)
    write_file(folder / "bare" / "controller-key.pem", key_pem(key), 0o600)
    return folder


def _tls(pki: Path, name: str, where: str = "") -> TlsConfig:
    folder = pki / where if where else pki
    return TlsConfig(ca=pki / "ca.pem", cert=folder / f"{name}.pem",
                     key=folder / f"{name}-key.pem")


def _serving(channel: grpc.Channel) -> grpc.StatusCode:
    try:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _code(call) -> tuple[grpc.StatusCode, str]:
    try:
        result = call()
        if hasattr(result, "__iter__") and not hasattr(result, "DESCRIPTOR"):
            list(result)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


# ------------------------------------------------------------------------- participant


class FakeCore:
    """What ParticipantServicer calls; records every call that reaches it."""

    def __init__(self, name: str) -> None:
        self.config = SimpleNamespace(name=name, role="server")
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def fetch_adapter(self, round_index: int, run_id: str = ""):
        with self.lock:
            self.calls.append("fetch_adapter")
        raise NotFound("no adapter yet")

    def receive_knowledge(self, run_id, round_index, chunks):
        with self.lock:
            self.calls.append("receive_knowledge")
        list(chunks)
        raise NotFound("not this run")

    def push_adapter(self, round_index, data):
        with self.lock:
            self.calls.append("push_adapter")
        raise NotFound("no model")


@pytest.fixture(scope="module")
def participant(pki, tmp_path_factory):
    settings = ParticipantSettings(
        grpc_port=0, host="127.0.0.1", tls_cert=pki / "llm.pem", tls_key=pki / "llm-key.pem",
        tls_client_ca=pki / "ca.pem")
    core = FakeCore("llm")
    process = ParticipantProcess(settings, SimpleNamespace(name="llm", role="server"), core)
    process.start()
    yield f"localhost:{process.grpc_port}", core
    process.stop(grace=0.2)


def _knowledge(source: str) -> list[knowledge_pb2.KnowledgeChunk]:
    return [knowledge_pb2.KnowledgeChunk(header=knowledge_pb2.KnowledgeHeader(
        run_id="r1", round=1, source=source, tokenizer_fingerprint="0" * 64, top_k=4))]


def test_wrong_ca_expired_and_plaintext_callers_are_refused_at_the_handshake(
        pki, participant) -> None:
    endpoint, core = participant
    before = list(core.calls)
    with open_channel(endpoint, _tls(pki, "controller")) as channel:
        assert _serving(channel) == grpc.StatusCode.OK  # the controller's own certificate
    refused = {"wrong CA": _tls(pki, "controller", "rogue"),
               "expired": _tls(pki, "controller", "expired"),
               "no client certificate": TlsConfig(ca=pki / "ca.pem")}
    for why, tls in refused.items():
        with open_channel(endpoint, tls) as channel:
            assert _serving(channel) == grpc.StatusCode.UNAVAILABLE, why
            stub = participant_pb2_grpc.ParticipantServiceStub(channel)
            code, _ = _code(lambda s=stub: s.FetchAdapter(
                participant_pb2.FetchAdapterRequest(round=-1), timeout=5))
            assert code == grpc.StatusCode.UNAVAILABLE, why
    with grpc.insecure_channel(endpoint) as channel:  # plaintext against a TLS port
        assert _serving(channel) == grpc.StatusCode.UNAVAILABLE
        code, _ = _code(lambda: participant_pb2_grpc.ParticipantServiceStub(channel)
                        .FetchAdapter(participant_pb2.FetchAdapterRequest(round=-1), timeout=5))
        assert code == grpc.StatusCode.UNAVAILABLE
    assert core.calls == before  # none of them reached the participant


def test_an_impostor_server_is_refused_by_the_controller(pki, tmp_path) -> None:
    """The other direction: a server whose certificate is not from the CA (a man in the
    middle posing as llm) gets no call from the controller."""
    settings = ParticipantSettings(grpc_port=0, host="127.0.0.1",
                                   tls_cert=pki / "rogue" / "llm.pem",
                                   tls_key=pki / "rogue" / "llm-key.pem",
                                   tls_client_ca=pki / "rogue" / "ca.pem")
    core = FakeCore("llm")
    process = ParticipantProcess(settings, SimpleNamespace(name="llm", role="server"), core)
    process.start()
    try:
        with open_channel(f"localhost:{process.grpc_port}", _tls(pki, "controller")) as channel:
            assert _serving(channel) == grpc.StatusCode.UNAVAILABLE
    finally:
        process.stop(grace=0.2)
    assert core.calls == []


def test_participant_rpcs_take_the_callers_identity_from_its_certificate(
        pki, participant) -> None:
    endpoint, core = participant
    fetch = participant_pb2.FetchAdapterRequest(round=-1)
    # the controller and the run job (an operator) fetch adapters: the call reaches the core
    for who in ("controller", "run"):
        with open_channel(endpoint, _tls(pki, who)) as channel:
            stub = participant_pb2_grpc.ParticipantServiceStub(channel)
            assert _code(lambda s=stub: s.FetchAdapter(fetch, timeout=5))[0] == \
                grpc.StatusCode.NOT_FOUND, who
    with open_channel(endpoint, _tls(pki, "controller")) as channel:
        stub = participant_pb2_grpc.ParticipantServiceStub(channel)
        assert _code(lambda: stub.ReceiveKnowledge(iter(_knowledge("client-1")), timeout=5)
                     )[0] == grpc.StatusCode.NOT_FOUND
    reached = list(core.calls)
    assert reached == ["fetch_adapter", "fetch_adapter", "receive_knowledge"]
    # client-2 has a valid certificate from the CA, but it names client-2
    with open_channel(endpoint, _tls(pki, "client-2")) as channel:
        stub = participant_pb2_grpc.ParticipantServiceStub(channel)
        code, details = _code(lambda: stub.ReceiveKnowledge(iter(_knowledge("client-1")),
                                                            timeout=5))
        assert code == PD
        assert "fedmkt:participant:client-2 may not call ParticipantService/ReceiveKnowledge" \
            in details and "only fedmkt:controller" in details
        code, details = _code(lambda: stub.FetchAdapter(fetch, timeout=5))
        assert code == PD and "FetchAdapter" in details
        code, details = _code(lambda: stub.PushAdapter(
            iter([participant_pb2.AdapterChunk(round=1, data=b"x", last=True)]), timeout=5))
        assert code == PD and "PushAdapter" in details
        code, _ = _code(lambda: stub.Describe(participant_pb2.DescribeRequest(), timeout=5))
        assert code == PD
        assert _serving(channel) == grpc.StatusCode.OK  # health stays open to the CA's certs
    # the CA signed it and CN says controller, but no fedmkt: identity: CN is not an identity
    with open_channel(endpoint, _tls(pki, "controller", "bare")) as channel:
        stub = participant_pb2_grpc.ParticipantServiceStub(channel)
        code, details = _code(lambda: stub.FetchAdapter(fetch, timeout=5))
        assert code == PD and "no fedmkt: URI SAN" in details
    assert core.calls == reached  # nothing denied reached the participant


def test_tls_allow_adds_callers_per_rpc(pki, tmp_path) -> None:
    settings = ParticipantSettings(
        grpc_port=0, host="127.0.0.1", tls_cert=pki / "llm.pem", tls_key=pki / "llm-key.pem",
        tls_client_ca=pki / "ca.pem",
        tls_allow={"ParticipantService/FetchAdapter": ["fedmkt:participant:client-1"]})
    core = FakeCore("llm")
    process = ParticipantProcess(settings, SimpleNamespace(name="llm", role="server"), core)
    process.start()
    try:
        fetch = participant_pb2.FetchAdapterRequest(round=-1)
        for who, code in (("client-1", grpc.StatusCode.NOT_FOUND), ("client-2", PD)):
            with open_channel(f"localhost:{process.grpc_port}", _tls(pki, who)) as channel:
                stub = participant_pb2_grpc.ParticipantServiceStub(channel)
                assert _code(lambda s=stub: s.FetchAdapter(fetch, timeout=5))[0] == code, who
    finally:
        process.stop(grace=0.2)
    with pytest.raises(SettingsError, match="unknown RPC 'FetchAdapter'"):
        load_settings(ParticipantSettings, tls_cert=pki / "llm.pem", tls_key=pki / "llm-key.pem",
                      tls_client_ca=pki / "ca.pem", tls_allow={"FetchAdapter": ["*"]})
    with pytest.raises(SettingsError, match="needs mTLS"):
        load_settings(ParticipantSettings, tls_cert=pki / "llm.pem", tls_key=pki / "llm-key.pem",
                      tls_allow={"ParticipantService/FetchAdapter": ["*"]})
    with pytest.raises(ValueError, match="not an identity"):
        check_allow({"ParticipantService/FetchAdapter": ["client-1"]})


# ---------------------------------------------------------------------------- aligner


@pytest.fixture(scope="module")
def aligner(pki, tmp_path_factory):
    settings = AlignerSettings(grpc_port=0, http_port=-1, host="127.0.0.1",
                               state_dir=tmp_path_factory.mktemp("aligner"),
                               tls_cert=pki / "aligner.pem", tls_key=pki / "aligner-key.pem",
                               tls_client_ca=pki / "ca.pem")
    process = AlignerProcess(settings)
    process.start()
    a = process.engine.register(files=tiny_tokenizer_files(["the quick brown fox"] * 10),
                                name="a").fingerprint
    b = process.engine.register(files=tiny_tokenizer_files(["lorem ipsum dolor"] * 10, 280),
                                name="b").fingerprint
    yield f"localhost:{process.grpc_port}", a, b
    process.stop(grace=0.2)


def _align(stub, a: str, b: str, source: str):
    requests = [aligner_pb2.AlignKnowledgeRequest(config=aligner_pb2.AlignKnowledgeConfig(
        source_fingerprint=a, target_fingerprint=b, top_k=4))]
    chunk = _knowledge(source)[0]
    chunk.header.tokenizer_fingerprint = a
    requests.append(aligner_pb2.AlignKnowledgeRequest(
        batch=aligner_pb2.AlignKnowledgeBatch(chunk=chunk)))
    return _code(lambda: stub.AlignKnowledge(iter(requests), timeout=5))


def test_aligner_knowledge_and_tokenizers_only_as_oneself(pki, aligner) -> None:
    endpoint, a, b = aligner
    with open_channel(endpoint, _tls(pki, "client-2")) as channel:
        stub = aligner_pb2_grpc.AlignerServiceStub(channel)
        # knowledge claiming another participant's name
        code, details = _align(stub, a, b, source="client-1")
        assert code == PD, details
        assert "fedmkt:participant:client-2 may not send knowledge as source 'client-1'" \
            in details
        # its own knowledge gets through (an empty chunk: nothing to project)
        code, details = _align(stub, a, b, source="client-2")
        assert code == grpc.StatusCode.OK, details
        # a tokenizer under another participant's label; under its own it gets past the check
        register = aligner_pb2.RegisterTokenizerRequest
        code, details = _code(lambda: stub.RegisterTokenizer(register(name="client-1",
                                                                      builtin="nope"), timeout=5))
        assert code == PD and "labelled 'client-1'" in details
        code, details = _code(lambda: stub.RegisterTokenizer(register(name="client-2/x",
                                                                      builtin="nope"), timeout=5))
        assert code not in (PD, grpc.StatusCode.OK), details
        # read-only calls are open to every certificate from the CA
        code, _ = _code(lambda: stub.ListTokenizers(aligner_pb2.ListTokenizersRequest(),
                                                    timeout=5))
        assert code == grpc.StatusCode.OK
    with open_channel(endpoint, _tls(pki, "run")) as channel:  # an operator: not a sender
        stub = aligner_pb2_grpc.AlignerServiceStub(channel)
        code, details = _align(stub, a, b, source="client-1")
        assert code == PD and "may not call AlignerService/AlignKnowledge" in details
    with open_channel(endpoint, _tls(pki, "controller")) as channel:  # pipes anyone's
        stub = aligner_pb2_grpc.AlignerServiceStub(channel)
        code, details = _align(stub, a, b, source="client-1")
        assert code == grpc.StatusCode.OK, details
        code, details = _code(lambda: stub.RegisterTokenizer(
            aligner_pb2.RegisterTokenizerRequest(name="client-1", builtin="nope"), timeout=5))
        assert code not in (PD, grpc.StatusCode.OK), details
    with open_channel(endpoint, _tls(pki, "controller", "rogue")) as channel:
        assert _serving(channel) == grpc.StatusCode.UNAVAILABLE


def test_identity_names_and_plaintext_servers_check_nothing(tmp_path) -> None:
    assert [identity_of_name(n) for n in ("controller", "aligner", "run", "llm",
                                          "operator:backup", "participant:run")] == [
        "fedmkt:controller", "fedmkt:aligner", "fedmkt:operator:run",
        "fedmkt:participant:llm", "fedmkt:operator:backup", "fedmkt:participant:run"]
    with pytest.raises(ValueError, match="kind before"):
        identity_of_name("admin:x")
    # no tls_client_ca: no policy on the credentials, the gate stays idle
    assert load_settings(ParticipantSettings).server_credentials() is None
    assert IdentityPolicy().rule("/grpc.health.v1.Health/Check") is None
    assert IdentityPolicy().rule("/fedmkt.v1.ParticipantService/Unknown").who == (
        "fedmkt:controller",)
