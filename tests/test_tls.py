"""Services serve TLS and mTLS when their settings name PEM files; the controller's channels
(``open_channel`` with the federation config's ``tls``) get through, others do not."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedmkt.config import TlsConfig
from services.aligner.main import AlignerProcess
from services.controller.clients import open_channel
from services.settings import AlignerSettings, SettingsError, load_settings


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer: str, issuer_key, *, ca: bool = False,
          sans: list[x509.GeneralName] | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(folder: Path, name: str, cert: x509.Certificate, key) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("fedmkt test CA", ca_key, "fedmkt test CA", ca_key, ca=True)
    ca_path, _ = _write(folder, "ca", ca, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _cert("aligner", server_key, "fedmkt test CA", ca_key,
                   sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(
                       "127.0.0.1"))])
    server_cert, server_key_path = _write(folder, "server", server, server_key)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _cert("controller", client_key, "fedmkt test CA", ca_key)
    client_cert, client_key_path = _write(folder, "client", client, client_key)
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rogue = _cert("rogue", rogue_key, "rogue", rogue_key, ca=True)  # self-signed, not our CA
    rogue_cert, rogue_key_path = _write(folder, "rogue", rogue, rogue_key)
    return {"ca": ca_path, "server_cert": server_cert, "server_key": server_key_path,
            "client_cert": client_cert, "client_key": client_key_path,
            "rogue_cert": rogue_cert, "rogue_key": rogue_key_path}


def _serving(channel: grpc.Channel) -> bool:
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=5)
    except grpc.RpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _aligner(tmp_path: Path, **tls) -> AlignerProcess:
    settings = AlignerSettings(grpc_port=0, http_port=-1, state_dir=tmp_path, **tls)
    process = AlignerProcess(settings)
    process.start()
    return process


def test_mtls_admits_only_clients_with_a_certificate_from_the_ca(pki, tmp_path) -> None:
    process = _aligner(tmp_path, tls_cert=pki["server_cert"], tls_key=pki["server_key"],
                       tls_client_ca=pki["ca"])
    endpoint = f"localhost:{process.grpc_port}"
    try:
        good = TlsConfig(ca=pki["ca"], cert=pki["client_cert"], key=pki["client_key"])
        with open_channel(endpoint, good) as channel:
            assert _serving(channel)
        for refused in (TlsConfig(ca=pki["ca"]),  # no client certificate
                        TlsConfig(ca=pki["ca"], cert=pki["rogue_cert"], key=pki["rogue_key"])):
            with open_channel(endpoint, refused) as channel:
                assert not _serving(channel)
        with grpc.insecure_channel(endpoint) as channel:
            assert not _serving(channel)
    finally:
        process.stop(grace=0.5)


def test_tls_without_client_auth(pki, tmp_path) -> None:
    process = _aligner(tmp_path, tls_cert=pki["server_cert"], tls_key=pki["server_key"])
    endpoint = f"localhost:{process.grpc_port}"
    try:
        with open_channel(endpoint, TlsConfig(ca=pki["ca"])) as channel:
            assert _serving(channel)
        with grpc.insecure_channel(endpoint) as channel:
            assert not _serving(channel)
    finally:
        process.stop(grace=0.5)


def test_tls_settings_are_checked(pki, tmp_path, monkeypatch) -> None:
    with pytest.raises(SettingsError, match="go together"):
        load_settings(AlignerSettings, tls_cert=pki["server_cert"])
    with pytest.raises(SettingsError, match="needs tls_cert"):
        load_settings(AlignerSettings, tls_client_ca=pki["ca"])
    with pytest.raises(SettingsError, match="no such file"):
        load_settings(AlignerSettings, tls_cert=tmp_path / "missing.crt",
                      tls_key=pki["server_key"])
    monkeypatch.setenv("FEDMKT_ALIGNER_TLS_CERT", str(pki["server_cert"]))
    monkeypatch.setenv("FEDMKT_ALIGNER_TLS_KEY", str(pki["server_key"]))
    settings = load_settings(AlignerSettings)
    assert settings.server_credentials() is not None
