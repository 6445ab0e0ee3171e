"""``fedmkt certs`` (services.certs, issue 10 part 5): a dev CA and one certificate per service
naming it in CN and a URI SAN, keys 0600, kept when already right, never overwritten silently."""

from __future__ import annotations

import ipaddress
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from typer.testing import CliRunner

from fedmkt.cli import app
from services.certs import CertsError, make_certs, names_from_federation

ROOT = Path(__file__).resolve().parent.parent


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _sans(path: Path) -> x509.SubjectAlternativeName:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def test_certificates_name_their_service_and_keys_are_private(tmp_path) -> None:
    result = make_certs(tmp_path, ["aligner", "controller", "run", "client-1",
                                   "operator:backup"], hosts=("fedmkt.example", "10.1.2.3"))
    assert result.new_ca and result.created == ["aligner", "controller", "run", "client-1",
                                                 "operator:backup"]
    assert _mode(tmp_path / "ca-key.pem") == 0o600
    for stem, identity in (("aligner", "fedmkt:aligner"), ("controller", "fedmkt:controller"),
                           ("run", "fedmkt:operator:run"),
                           ("client-1", "fedmkt:participant:client-1"),
                           ("backup", "fedmkt:operator:backup")):
        assert _mode(tmp_path / f"{stem}-key.pem") == 0o600
        cert = x509.load_pem_x509_certificate((tmp_path / f"{stem}.pem").read_bytes())
        assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == stem
        sans = _sans(tmp_path / f"{stem}.pem")
        assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [identity]
        assert sans.get_values_for_type(x509.DNSName) == [stem, "localhost", "fedmkt.example"]
        assert sans.get_values_for_type(x509.IPAddress) == [
            ipaddress.ip_address(i) for i in ("127.0.0.1", "::1", "10.1.2.3")]


def test_idempotent_adds_missing_and_refuses_to_overwrite(tmp_path) -> None:
    make_certs(tmp_path, ["controller", "llm"])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    again = make_certs(tmp_path, ["controller", "llm", "client-1"])
    assert again.kept == ["controller", "llm"] and again.created == ["client-1"]
    assert not again.new_ca
    assert all((tmp_path / n).read_bytes() == data for n, data in before.items())
    # client-1 joined the same CA
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    x509.load_pem_x509_certificate((tmp_path / "client-1.pem").read_bytes()
                                   ).verify_directly_issued_by(ca)
    # a certificate that is not right is never replaced silently
    (tmp_path / "llm.pem").write_bytes((tmp_path / "controller.pem").read_bytes())
    with pytest.raises(CertsError, match="llm.pem: does not name fedmkt:participant:llm"):
        make_certs(tmp_path, ["llm"])
    (tmp_path / "ca-key.pem").unlink()
    with pytest.raises(CertsError, match="without ca-key.pem"):
        make_certs(tmp_path, ["controller", "client-2"])
    forced = make_certs(tmp_path, ["controller", "llm"], force=True)
    assert forced.new_ca and forced.created == ["controller", "llm"]
    assert forced.stale == ["client-1.pem"]  # signed by the CA just replaced
    assert (tmp_path / "controller.pem").read_bytes() != before["controller.pem"]


def test_bad_names_are_refused(tmp_path) -> None:
    for names, message in ((["controller", "controller"], "two services"),
                           (["ca"], "clash"), (["x-key"], "clash"), (["admin:x"], "kind before"),
                           (["a b"], "must be 1-63"), ([], "no services")):
        with pytest.raises(CertsError, match=message):
            make_certs(tmp_path, names)
    assert not list(tmp_path.iterdir())


def test_cli_reads_the_federation_and_dev_certs_wraps_it(tmp_path) -> None:
    federation = ROOT / "deploy" / "federation.yaml"
    names = names_from_federation(federation)
    assert names[:3] == ["aligner", "controller", "run"] and "llm" in names
    runner = CliRunner()
    out = runner.invoke(app, ["certs", str(tmp_path / "a"), "--federation", str(federation),
                              "--services", "client-9"])
    assert out.exit_code == 0, out.output
    assert {p.name for p in (tmp_path / "a").glob("*.pem")} >= {
        "ca.pem", "client-9.pem", *(f"{n}.pem" for n in names), *(f"{n}-key.pem" for n in names)}
    assert "kept" in runner.invoke(app, ["certs", str(tmp_path / "a"), "--services",
                                         "llm"]).output
    refused = runner.invoke(app, ["certs", str(tmp_path / "a"), "--services", "bad:name"])
    assert refused.exit_code == 2 and "kind before" in refused.output
    # scripts/dev-certs.py: the same code, keys readable for compose file secrets
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "dev-certs.py"),
                           str(tmp_path / "b")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert _mode(tmp_path / "b" / "llm-key.pem") == 0o644
    assert _mode(tmp_path / "b" / "ca-key.pem") == 0o600
    assert "fedmkt:participant:llm" in _sans(tmp_path / "b" / "llm.pem").get_values_for_type(
        x509.UniformResourceIdentifier)
    # unlike fedmkt certs, it replaces what it cannot keep (CI reuses its folder), saying so
    (tmp_path / "b" / "llm.pem").write_bytes((tmp_path / "b" / "run.pem").read_bytes())
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "dev-certs.py"),
                           str(tmp_path / "b")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "replacing what is there" in done.stderr
    assert "fedmkt:participant:llm" in _sans(tmp_path / "b" / "llm.pem").get_values_for_type(
        x509.UniformResourceIdentifier)
