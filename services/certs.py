"""A development PKI for mTLS: one CA and one key + certificate per fedmkt service.

``fedmkt certs OUT --services aligner,controller,run,llm,client-1`` (or ``--federation F``:
the aligner, the controller, the run job and every participant of F) writes into ``OUT``:

* ``ca.pem`` (the CA certificate) and ``ca-key.pem`` (its key, always 0600: it never leaves
  this folder; it lets a later call add a service to the same CA);
* per service ``<name>.pem`` (certificate) and ``<name>-key.pem`` (key, 0600 unless asked for
  world-readable keys, which compose file secrets need: they are bind-mounted with the host
  file's mode and the services run as uid 10001).

Every certificate says whom it names twice: subject ``CN=<name>, O=fedmkt`` and a URI SAN, the
identity the services check (``services.identity``): ``fedmkt:controller``, ``fedmkt:aligner``,
``fedmkt:operator:<name>`` (``run``, the run job, and any ``operator:<name>``) or
``fedmkt:participant:<name>`` (every other name). Its DNS SANs are the service name (the
compose / Kubernetes service name), ``localhost`` and any ``--host``; its IP SANs 127.0.0.1 and
::1 (and IP ``--host`` values). Good for server and client authentication, ECDSA P-256,
``--days`` (30) valid.

Idempotent: files that are already there and right (signed by this CA, naming the service, not
expiring within a day, key matching) are kept; missing services are added with the existing CA.
Anything else there (another CA, an expired or foreign certificate, a CA without its key) is
refused unless ``force``, which makes a new CA and every certificate anew. For anything but a
test deployment use your own CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.identity import RESERVED_NAMES, identity_of_name

CA_CERT, CA_KEY = "ca.pem", "ca-key.pem"
DEFAULT_DAYS = 30
# the names every deployment has besides its participants (compose and Kubernetes: the run job
# is `run`)
SERVICE_NAMES = ("aligner", "controller", "run")
LOOPBACK_IPS = ("127.0.0.1", "::1")
_DNS_LABELS = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                         r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


class CertsError(ValueError):
    """What ``fedmkt certs`` refuses to do, with what to do instead."""


@dataclass
class CertsResult:
    out: Path
    created: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    new_ca: bool = False
    # certificates in the folder this call did not name, left signed by a CA replaced now
    stale: list[str] = field(default_factory=list)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedmkt"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def file_stem(name: str) -> str:
    """The file name part of a service name (``operator:backup`` -> ``backup``)."""
    return name.split(":", 1)[1] if ":" in name else name


def new_ca(*, days: int = DEFAULT_DAYS, now: datetime.datetime | None = None
           ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("fedmkt dev CA"))
            .issuer_name(_name("fedmkt dev CA")).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def _sans(name: str, hosts: tuple[str, ...]) -> list[x509.GeneralName]:
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity_of_name(name))]
    stem = file_stem(name)
    dns = [stem] if _DNS_LABELS.match(stem) else []  # "client_1" is a name but no DNS name
    dns.append("localhost")
    ips = list(LOOPBACK_IPS)
    for host in hosts:
        try:
            ips.append(str(ipaddress.ip_address(host)))
        except ValueError:
            if not _DNS_LABELS.match(host):
                raise CertsError(f"--host {host!r} is neither a DNS name nor an IP "
                                 "address") from None
            dns.append(host)
    sans += [x509.DNSName(d) for d in dict.fromkeys(dns)]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in dict.fromkeys(ips)]
    return sans


def issue(ca_cert: x509.Certificate, ca_key, name: str, *, hosts: tuple[str, ...] = (),
          days: int = DEFAULT_DAYS, now: datetime.datetime | None = None,
          not_before: datetime.datetime | None = None,
          not_after: datetime.datetime | None = None,
          ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A key and a certificate for service ``name`` signed by the CA (``not_before`` /
    ``not_after`` override the validity, e.g. for an expired test certificate)."""
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(file_stem(name)))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - datetime.timedelta(minutes=5))
            .not_valid_after(not_after or now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(_sans(name, hosts)), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` with ``mode`` from the start (no moment with a wider mode), atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)  # the umask may have narrowed it
    os.replace(tmp, path)


def _problem(ca: x509.Certificate, name: str, cert_path: Path, key_path: Path,
             now: datetime.datetime) -> str | None:
    """Why the existing pair for ``name`` is not fit to keep (None: keep it)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        return f"unreadable ({exc})"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "not signed by this ca.pem"
    if cert.not_valid_after_utc < now + datetime.timedelta(days=1):
        return f"expires {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    try:
        uris = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if identity_of_name(name) not in uris:
        return f"does not name {identity_of_name(name)}"
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        return f"{key_path.name} is not the key of {cert_path.name}"
    return None


def names_from_federation(path: Path) -> list[str]:
    """The aligner, the controller, the run job and every participant of a federation."""
    from fedmkt.config import load_federation_config

    participants = [p.name for p in load_federation_config(path).participants]
    clash = sorted(set(participants) & set(RESERVED_NAMES))
    if clash:
        raise CertsError(f"{path}: participant names {clash} are the names of services "
                         f"({', '.join(RESERVED_NAMES)}); their certificates would not name a "
                         "participant: rename them")
    return [*SERVICE_NAMES, *participants]


def check_names(names: list[str]) -> list[str]:
    if not names:
        raise CertsError("no services named: give --services a,b,... or --federation FILE")
    stems: dict[str, str] = {}
    for name in names:
        if not name:
            raise CertsError("an empty service name")
        identity_of_name(name)  # raises ValueError for a bad name
        stem = file_stem(name)
        if stem in ("ca", "ca-key") or stem.endswith("-key"):
            raise CertsError(f"service name {name!r}: its files would clash with "
                             f"ca.pem / ca-key.pem / <name>-key.pem; choose another name")
        if stem in stems:
            raise CertsError(f"two services would write {stem}.pem: {stems.get(stem, stem)!r} "
                             f"and {name!r}")
        stems[stem] = name
    return names


def make_certs(out: Path, names: list[str], *, days: int = DEFAULT_DAYS,
               hosts: tuple[str, ...] = (), force: bool = False, key_mode: int = 0o600,
               now: datetime.datetime | None = None) -> CertsResult:
    """Create (or complete) the dev PKI in ``out`` for ``names``; see the module docstring."""
    try:
        names = check_names(list(names))
    except ValueError as exc:
        raise CertsError(str(exc)) from None
    if days < 1:
        raise CertsError(f"--days must be at least 1, got {days}")
    now = now or _now()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = CertsResult(out)
    ca_path, ca_key_path = out / CA_CERT, out / CA_KEY
    ca = ca_key = None
    if not force and ca_path.exists():
        try:
            ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
        except ValueError as exc:
            raise CertsError(f"{ca_path}: not a PEM certificate ({exc}); --force makes a new "
                             "CA and every certificate anew") from None
        if ca.not_valid_after_utc < now + datetime.timedelta(days=1):
            raise CertsError(f"{ca_path} expires {ca.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
                             "--force makes a new CA and every certificate anew")
        if ca_key_path.exists():
            ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    todo, refused = [], []
    for name in names:
        stem = file_stem(name)
        cert_path, key_path = out / f"{stem}.pem", out / f"{stem}-key.pem"
        present = cert_path.exists() or key_path.exists()
        if force or not present:
            todo.append(name)
            continue
        problem = ("no ca.pem to check it against" if ca is None
                   else _problem(ca, name, cert_path, key_path, now))
        if problem:
            refused.append(f"{cert_path.name}: {problem}")
        else:
            result.kept.append(name)
    if refused:
        raise CertsError(f"{out}: will not overwrite: {'; '.join(refused)}. Remove those files "
                         "or give --force (a new CA and every certificate anew)")
    if todo and ca is not None and ca_key is None:
        raise CertsError(f"{out}: cannot add {', '.join(todo)}: {CA_CERT} is there without "
                         f"{CA_KEY}; give --force (a new CA and every certificate anew)")
    if ca is None:
        if result.kept:  # cannot happen: kept pairs were checked against a CA
            raise CertsError(f"{out}: no ca.pem")
        ca, ca_key = new_ca(days=days, now=now)
        write_file(ca_path, cert_pem(ca), 0o644)
        write_file(ca_key_path, key_pem(ca_key), 0o600)
        result.new_ca = True
        named = {CA_CERT, *(f"{file_stem(n)}.pem" for n in names)}
        result.stale = sorted(p.name for p in out.glob("*.pem")
                              if p.name not in named and not p.name.endswith("-key.pem"))
    for name in todo:
        cert, key = issue(ca, ca_key, name, hosts=hosts, days=days, now=now)
        stem = file_stem(name)
        write_file(out / f"{stem}-key.pem", key_pem(key), key_mode)
        write_file(out / f"{stem}.pem", cert_pem(cert), 0o644)
        result.created.append(name)
    return result


__all__ = ["CA_CERT", "CA_KEY", "CertsError", "CertsResult", "SERVICE_NAMES",
           "check_names", "file_stem", "issue", "make_certs", "names_from_federation",
           "new_ca"]
