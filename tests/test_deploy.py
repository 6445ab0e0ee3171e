"""Deployment files agree with the code: compose, Kubernetes and the federation they run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fedmkt.config import load_federation_config

ROOT = Path(__file__).resolve().parent.parent
FEDERATION = ROOT / "deploy" / "federation.yaml"


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _k8s_deployments() -> dict[str, dict]:
    found = {}
    for path in (ROOT / "deploy" / "k8s").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "Deployment":
                found[doc["metadata"]["name"]] = doc
    return found


def test_federation_endpoints_name_the_deployed_services() -> None:
    fed = load_federation_config(FEDERATION)
    compose = _compose()["services"]
    deployments = _k8s_deployments()
    assert fed.aligner.endpoint == "aligner:50051"
    for spec in fed.participants:
        host, port = spec.endpoint.split(":")
        assert host in compose and host in deployments, spec.name
        for args in (compose[host]["command"],
                     deployments[host]["spec"]["template"]["spec"]["containers"][0]["args"]):
            assert args[:2] == ["serve", spec.role]
            assert args[args.index("--name") + 1] == spec.name
            assert args[args.index("--grpc-port") + 1] == port
    assert compose["run"]["command"][:2] == ["submit", "deploy/federation.yaml"]


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((ROOT / "deploy" / "kustomization.yaml").read_text())
    listed = {Path(r).name for r in kust["resources"]}
    assert listed == {p.name for p in (ROOT / "deploy" / "k8s").glob("*.yaml")}
    assert (ROOT / "deploy" / kust["configMapGenerator"][0]["files"][0]).exists()


@pytest.mark.slow
def test_a_participant_serves_from_the_federation_file(tmp_path) -> None:
    """`fedmkt serve client --federation F --name N` starts and answers `fedmkt health`."""
    cmd = [sys.executable, "-m", "fedmkt", "serve", "client", "--federation", str(FEDERATION),
           "--name", "client-gpt2", "--grpc-port", "0", "--state-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("READY") or not line:
                break
        assert line.startswith("READY client-gpt2"), line
        port = line.split("grpc=")[1].split()[0]
        health = subprocess.run([sys.executable, "-m", "fedmkt", "health", f"127.0.0.1:{port}"],
                                capture_output=True, text=True, timeout=60)
        assert health.returncode == 0 and health.stdout.strip() == "SERVING"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    wrong = subprocess.run([sys.executable, "-m", "fedmkt", "serve", "server", "--federation",
                            str(FEDERATION), "--name", "client-gpt2"],
                           capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and "role 'client'" in wrong.stderr
    dead = subprocess.run([sys.executable, "-m", "fedmkt", "health", "127.0.0.1:1"],
                          capture_output=True, text=True, timeout=60)
    assert dead.returncode != 0 and "UNAVAILABLE" in dead.stderr
