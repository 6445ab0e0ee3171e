"""Make a private CA and one certificate per fedmkt service, for mTLS in a test deployment.

    .venv/bin/python scripts/dev-certs.py [OUT]          (default build/certs)

Writes ``ca.pem`` and, for every service name, ``<name>.pem`` + ``<name>-key.pem``: the
aligner, the controller, the run job and every participant of deploy/federation.yaml. Each
certificate names the service (its compose/Kubernetes DNS name) and ``localhost`` (the
containers' own health checks), and is good for both server and client authentication, valid for
30 days. For anything but a test deployment use your own CA and keep the keys secret; these keys
are written world-readable (0644) because compose bind-mounts secrets with the host file's mode
and the services run as uid 10001.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT = Path(__file__).resolve().parent.parent


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedmkt"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o644)


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    from fedmkt.config import load_federation_config

    out = Path(argv[0]) if argv else ROOT / "build" / "certs"
    out.mkdir(parents=True, exist_ok=True)
    names = ["aligner", "controller", "run",
             *(p.name for p in load_federation_config(ROOT / "deploy" / "federation.yaml")
               .participants)]
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("fedmkt dev CA"))
          .issuer_name(_name("fedmkt dev CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    _write(out / "ca.pem", ca.public_bytes(serialization.Encoding.PEM))
    for name in names:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName(
                    [x509.DNSName(name), x509.DNSName("localhost")]), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        _write(out / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
        _write(out / f"{name}-key.pem", _pem_key(key))
    print(f"{out}: ca.pem and certificates for {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
