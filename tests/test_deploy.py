"""Deployment files agree with the code and with each other: docker-compose.yml (and its
overrides), the Kubernetes base and overlays, the federation configs they run, the image.

These read the files (fast, no Docker). The real thing — the image built, `docker compose up`
to the end, a client restarted mid-round, every overlay validated — is the CI docker stage
(scripts/compose-ci.sh, `make compose-test`)."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
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
CI_FEDERATION = ROOT / "deploy" / "compose" / "ci-federation.yaml"
K8S_BASE = ROOT / "deploy" / "k8s" / "base"
OVERLAYS = ROOT / "deploy" / "k8s" / "overlays"
CLIENTS = ["client-gpt2", "client-mistral", "client-neox"]
PARTICIPANTS = ["llm", *CLIENTS]
PORTS = {"aligner": 50051, "controller": 50050, **{name: 50060 for name in PARTICIPANTS}}
SERVICES = {"aligner": "fedmkt.v1.AlignerService", "controller": "fedmkt.v1.ControllerService",
            **{name: "fedmkt.v1.ParticipantService" for name in PARTICIPANTS}}


class _Loader(yaml.SafeLoader):
    """Compose files use the `!reset` tag (Compose spec): read it as its value."""


_Loader.add_constructor("!reset", lambda loader, node: (
    loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode)
    else loader.construct_mapping(node) if isinstance(node, yaml.MappingNode) else None))


def _compose(path: Path = ROOT / "docker-compose.yml") -> dict:
    return yaml.load(path.read_text(), Loader=_Loader)


def _k8s_objects() -> list[dict]:
    found = []
    for path in sorted(K8S_BASE.glob("*.yaml")):
        if path.name in ("kustomization.yaml", "federation.yaml"):
            continue
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def _k8s(kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in _k8s_objects() if o["kind"] == kind}


def _pod(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def _env(entries: list[dict] | dict | None) -> dict[str, str]:
    if isinstance(entries, dict):
        return {k: str(v) for k, v in entries.items()}
    return {e["name"]: e.get("value", "") for e in entries or []}


# --------------------------------------------------------------------------- federation


def test_federation_endpoints_name_the_deployed_services() -> None:
    fed = load_federation_config(FEDERATION)
    compose = _compose()["services"]
    deployments = _k8s("Deployment")
    assert fed.aligner.endpoint == f"aligner:{PORTS['aligner']}"
    assert [p.name for p in fed.participants] == PARTICIPANTS
    for spec in fed.participants:
        host, port = spec.endpoint.split(":")
        assert host == spec.name and int(port) == PORTS[spec.name]
        for args in (compose[host]["command"], _pod(deployments[host])["containers"][0]["args"]):
            assert args[:2] == ["serve", spec.role]
            assert args[args.index("--federation") + 1] == "/etc/fedmkt/federation.yaml"
            assert args[args.index("--name") + 1] == spec.name
            assert args[args.index("--grpc-port") + 1] == port
    for name in ("aligner", "controller"):
        args = compose[name]["command"]
        assert args[:2] == ["serve", name]
        assert args[args.index("--grpc-port") + 1] == str(PORTS[name])


def test_the_ci_federation_is_the_same_federation_in_small() -> None:
    fed, ci = load_federation_config(FEDERATION), load_federation_config(CI_FEDERATION)
    assert [(p.name, p.role, p.endpoint) for p in ci.participants] == \
        [(p.name, p.role, p.endpoint) for p in fed.participants]
    assert ci.aligner.endpoint == fed.aligner.endpoint
    assert ci.rounds == 2 and all(p.model.startswith("tiny-") for p in ci.participants)
    # the restart check needs the quorum to hold without one client
    assert ci.quorum.min_clients <= len(ci.clients) - 1


def test_the_ci_tls_federation_is_the_ci_one_with_tls() -> None:
    ci = yaml.safe_load(CI_FEDERATION.read_text())
    tls = yaml.safe_load((ROOT / "deploy" / "compose" / "ci-tls-federation.yaml").read_text())
    assert [(p["name"], p["model"], p["endpoint"]) for p in tls["participants"]] == \
        [(p["name"], p["model"], p["endpoint"]) for p in ci["participants"]]
    assert tls["tls"] == {"ca": "/run/secrets/ca.pem", "cert": "/run/secrets/tls.pem",
                          "key": "/run/secrets/tls-key.pem"}


def test_kubernetes_gets_the_same_federation_file() -> None:
    assert (K8S_BASE / "federation.yaml").read_bytes() == FEDERATION.read_bytes(), (
        "deploy/k8s/base/federation.yaml must be a copy of deploy/federation.yaml: "
        "cp deploy/federation.yaml deploy/k8s/base/federation.yaml")


@pytest.mark.parametrize("path, folder", [
    (ROOT / "deploy" / "compose" / "tls-federation.yaml", "/run/secrets"),
    (ROOT / "deploy" / "k8s" / "components" / "tls" / "federation.yaml", "/etc/fedmkt-tls"),
])
def test_the_tls_federations_are_the_federation_plus_tls(path: Path, folder: str) -> None:
    """The TLS variants differ from deploy/federation.yaml by their `tls` section only (the
    loader checks that the files exist, so they are read as YAML here)."""
    plain, tls = yaml.safe_load(FEDERATION.read_text()), yaml.safe_load(path.read_text())
    section = tls.pop("tls")
    assert tls == plain
    assert set(section) == {"ca", "cert", "key"}
    assert all(str(v).startswith(folder + "/") for v in section.values()), section


# --------------------------------------------------------------------------- compose


def test_compose_services_volumes_and_privacy() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"cache", "aligner", "controller", "run", *PARTICIPANTS}
    assert services["cache"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert services["cache"]["build"]["args"]["BASE_IMAGE"].endswith(":-python:3.11-slim}")
    assert compose["configs"]["federation"]["file"].endswith("./deploy/federation.yaml}")
    for name, service in services.items():
        assert service["init"] is True, name  # PID 1 forwards SIGTERM
        assert service["read_only"] is True and "no-new-privileges:true" in service["security_opt"]
        assert {"source": "federation", "target": "/etc/fedmkt/federation.yaml"} in \
            service["configs"]
    mounts = {name: {v.split(":")[1]: v.split(":")[0] for v in s.get("volumes", [])}
              for name, s in services.items()}
    for name in ["aligner", "controller", *PARTICIPANTS]:
        assert mounts[name]["/var/lib/fedmkt/state"] == f"{name}-state"
        assert mounts[name]["/var/lib/fedmkt/cache"] == "cache"
        health = services[name]["healthcheck"]["test"]
        assert health == ["CMD", "python", "/app/deploy/healthcheck.py", str(PORTS[name]),
                          SERVICES[name]]
    for client in CLIENTS:
        assert f"{client}-private:/var/lib/fedmkt/private:ro" in services[client]["volumes"]
        owners = [n for n, m in mounts.items()
                  if any(src.startswith(client) for src in m.values())]
        assert owners == [client], f"{client}'s volumes are mounted in {owners}"
        # a client shares a network with the controller and the run job only
        assert services[client]["networks"] == [client]
        members = {n for n, s in services.items() if client in s.get("networks", [])}
        assert members == {client, "controller", "run"}, members
    for name in PARTICIPANTS:
        assert services[name]["depends_on"] == {
            "cache": {"condition": "service_completed_successfully"}}
    assert services["run"]["depends_on"] == {
        n: {"condition": "service_healthy"} for n in ["aligner", "controller", *PARTICIPANTS]}
    assert services["run"]["restart"] == "no"
    published = {n: s["ports"] for n, s in services.items() if s.get("ports")}
    assert set(published) == {"aligner", "controller"}
    assert all(p.startswith("127.0.0.1:") for ports in published.values() for p in ports)
    assert set(compose["volumes"]) == {
        "cache", *(f"{n}-state" for n in ["aligner", "controller", *PARTICIPANTS]),
        *(f"{c}-private" for c in CLIENTS)}


def test_compose_overrides_name_existing_services() -> None:
    services = set(_compose()["services"])
    for path in (ROOT / "deploy" / "compose").glob("*.yml"):
        override = _compose(path)
        assert set(override.get("services", {})) <= services, path.name
    ci = _compose(ROOT / "deploy" / "compose" / "ci.yml")
    assert ci["configs"]["federation"]["file"] == "./deploy/compose/ci-federation.yaml"
    assert ci["services"]["aligner"]["ports"] == [] and ci["services"]["controller"]["ports"] == []
    gpu = _compose(ROOT / "deploy" / "compose" / "gpu.yml")
    devices = gpu["services"]["llm"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


# --------------------------------------------------------------------------- kubernetes


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S_BASE / "kustomization.yaml").read_text())
    listed = set(kust["resources"])
    assert listed == {p.name for p in K8S_BASE.glob("*.yaml")} - {"kustomization.yaml",
                                                                   "federation.yaml"}
    assert kust["configMapGenerator"][0]["files"] == ["federation.yaml"]
    assert {p.name for p in OVERLAYS.iterdir()} == {"local", "gpu", "local-tls"}
    for name in ("local", "gpu"):
        kust = yaml.safe_load((OVERLAYS / name / "kustomization.yaml").read_text())
        assert kust["resources"] == ["../../base"]
    tls = yaml.safe_load((OVERLAYS / "local-tls" / "kustomization.yaml").read_text())
    assert tls["resources"] == ["../local"] and tls["components"] == ["../../components/tls"]


def test_compose_and_kubernetes_run_the_same_commands() -> None:
    compose = _compose()["services"]
    deployments = _k8s("Deployment")
    assert set(deployments) == {"aligner", "controller", *PARTICIPANTS}
    for name, deployment in deployments.items():
        container = _pod(deployment)["containers"][0]
        assert container["args"] == compose[name]["command"], name
        # compose's "${VAR:-}" (set by the user) is an empty value in Kubernetes
        expected = {k: "" if v.startswith("${") else v
                    for k, v in _env(compose[name].get("environment")).items()}
        assert _env(container.get("env")) == expected, name
        assert [p["containerPort"] for p in container["ports"]][0] == PORTS[name]
        paths = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert "/var/lib/fedmkt/state" in paths and "/tmp" in paths
        if name in CLIENTS:
            assert paths["/var/lib/fedmkt/private"]["readOnly"] is True
        if name in PARTICIPANTS:
            init = _pod(deployment)["initContainers"][0]
            assert init["command"] == ["python", "/app/deploy/prepare_cache.py",
                                       "/etc/fedmkt/federation.yaml", "--only", name]
    job = _k8s("Job")["run"]
    args = _pod(job)["containers"][0]["args"]
    assert args[:4] == compose["run"]["command"][:4]
    assert args[args.index("--report-dir") + 1] == "/var/lib/fedmkt/runs"
    services = _k8s("Service")
    for name, port in PORTS.items():
        assert services[name]["spec"]["ports"][0]["port"] == port


def test_kubernetes_pods_are_locked_down() -> None:
    workloads = [*_k8s("Deployment").values(), *_k8s("Job").values()]
    claims = set(_k8s("PersistentVolumeClaim"))
    for obj in workloads:
        pod = _pod(obj)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["automountServiceAccountToken"] is False
        for container in pod.get("initContainers", []) + pod["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["requests"] and container["resources"]["limits"]
        for volume in pod["volumes"]:
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
    for name, deployment in _k8s("Deployment").items():
        container = _pod(deployment)["containers"][0]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": PORTS[name], "service": SERVICES[name]}
    for client in CLIENTS:
        users = [n for n, d in _k8s("Deployment").items()
                 if any(v.get("persistentVolumeClaim", {}).get("claimName", "").startswith(client)
                        for v in _pod(d)["volumes"])]
        assert users == [client]


def test_network_policies_let_only_the_controller_reach_participants() -> None:
    policies = _k8s("NetworkPolicy")
    assert policies["default-deny"]["spec"] == {"podSelector": {},
                                                "policyTypes": ["Ingress", "Egress"]}
    roles = {d["spec"]["template"]["metadata"]["labels"]["fedmkt.io/role"]
             for d in [*_k8s("Deployment").values(), *_k8s("Job").values()]}
    assert roles == {"aligner", "controller", "server", "client", "run"}

    def allowed_from(role: str) -> set[str]:
        found = set()
        for policy in policies.values():
            spec = policy["spec"]
            selector = spec["podSelector"]
            targets = set(selector.get("matchLabels", {}).values())
            for expr in selector.get("matchExpressions", []):
                targets |= set(expr["values"])
            if role not in targets:
                continue
            for rule in spec.get("ingress", []):
                for peer in rule["from"]:
                    sel = peer["podSelector"]
                    found |= set(sel.get("matchLabels", {}).values())
                    for expr in sel.get("matchExpressions", []):
                        found |= set(expr["values"])
        return found

    assert allowed_from("client") == {"controller", "run"}
    assert allowed_from("server") == {"controller", "run"}
    assert allowed_from("aligner") == {"controller"}
    assert allowed_from("controller") == {"run"}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_overlays_render_and_only_gpu_puts_the_llm_on_a_gpu() -> None:
    rendered = {}
    for overlay in ("local", "gpu"):
        out = subprocess.run(["kubectl", "kustomize", str(OVERLAYS / overlay)],
                             capture_output=True, text=True, timeout=120, check=True).stdout
        rendered[overlay] = [d for d in yaml.safe_load_all(out) if d]
    for overlay, docs in rendered.items():
        assert all(d["metadata"].get("namespace") == "fedmkt"
                   for d in docs if d["kind"] != "Namespace")
        maps = [d for d in docs if d["kind"] == "ConfigMap"]
        assert len(maps) == 1 and maps[0]["data"]["federation.yaml"] == FEDERATION.read_text()
        for d in docs:
            if d["kind"] not in ("Deployment", "Job"):
                continue
            container = _pod(d)["containers"][0]
            gpu = container["resources"].get("limits", {}).get("nvidia.com/gpu")
            on_gpu = overlay == "gpu" and d["metadata"]["name"] == "llm"
            assert (gpu == 1) is on_gpu, (overlay, d["metadata"]["name"])
            if on_gpu:
                assert container["image"] == "fedmkt:cuda"
                assert _pod(d)["tolerations"][0]["key"] == "nvidia.com/gpu"



@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_the_tls_overlay_serves_mtls_and_probes_with_tls(tmp_path: Path) -> None:
    certs = ROOT / "deploy" / "k8s" / "components" / "tls" / "certs"
    if not (certs / "ca.pem").exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "dev-certs.py"), str(certs)],
                       check=True, capture_output=True, timeout=120)
    out = subprocess.run(["kubectl", "kustomize", str(OVERLAYS / "local-tls")],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    secrets = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    for d in docs:
        if d["kind"] not in ("Deployment", "Job"):
            continue
        name, pod = d["metadata"]["name"], _pod(d)
        volume = next(v for v in pod["volumes"] if v["name"] == "tls")
        assert volume["secret"]["secretName"] in secrets  # the generated (hashed) name
        assert volume["secret"]["secretName"].startswith(f"fedmkt-tls-{name}-")
        container = pod["containers"][0]
        env = _env(container.get("env"))
        serving = name in ("aligner", *PARTICIPANTS)
        assert any(k.endswith("_TLS_CLIENT_CA") for k in env) is serving, name
        if serving:  # native gRPC probes cannot do TLS
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert "grpc" not in container[probe], (name, probe)
                assert container[probe]["exec"]["command"][:2] == [
                    "python", "/app/deploy/healthcheck.py"]


# --------------------------------------------------------------------------- image


def _third_party_imports() -> set[str]:
    found = set()
    for folder in ("fedmkt", "services"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names
            and m not in ("fedmkt", "services")}


def _requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[<>=!~\[ ;]", line)[0].lower().replace("_", "-"))
    return names


def test_the_image_requirements_cover_every_import() -> None:
    """deploy/requirements.txt (the image's dependencies) lists what the code imports."""
    listed = (_requirement_names(ROOT / "deploy" / "requirements.txt")
              | _requirement_names(ROOT / "requirements" / "nodeps.txt") | {"torch"})
    providers = importlib.metadata.packages_distributions()
    missing = {}
    for module in sorted(_third_party_imports()):
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [module])}
        if not dists & listed:
            missing[module] = sorted(dists)
    assert not missing, f"add to deploy/requirements.txt: {missing}"
    tested = _requirement_names(ROOT / "requirements" / "test.txt")
    assert _requirement_names(ROOT / "deploy" / "requirements.txt") - tested <= {"filelock"}


def test_the_dockerfile_builds_offline_as_non_root() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in text
    assert "PIP_NO_INDEX=1" in text and "COPY build/wheelhouse/${VARIANT}/ /wheels/" in text
    assert '"torch==2.13.0"' in text
    assert "USER 10001:10001" in text and 'ENTRYPOINT ["fedmkt"]' in text
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") + 1:].count("!build/wheelhouse/") == 1
    for copied in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE):
        for source in copied.split():
            assert any(source.startswith(line[1:].rstrip("/")) for line in ignore
                       if line.startswith("!")), f"{source} is .dockerignored"


def test_prepare_cache_refuses_an_unknown_participant() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "deploy" / "prepare_cache.py"),
                          str(CI_FEDERATION), "--only", "nobody"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "no participant 'nobody'" in out.stderr


def test_submit_fails_fast_when_the_report_folder_is_not_writable(tmp_path: Path) -> None:
    """Before the federation runs, not after (a folder below a plain file: even root fails)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = subprocess.run([sys.executable, "-m", "fedmkt", "submit", str(CI_FEDERATION),
                          "--controller", "127.0.0.1:1", "--wait-seconds", "1",
                          "--report-dir", str(blocker / "runs")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "cannot write the report folder" in out.stderr, out.stderr
    assert "FEDMKT_UID" in out.stderr


@pytest.mark.slow
def test_a_participant_serves_from_the_federation_file(tmp_path) -> None:
    """`fedmkt serve client --federation F --name N` starts and answers health checks (both
    `fedmkt health` and the containers' deploy/healthcheck.py)."""
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
        light = subprocess.run([sys.executable, str(ROOT / "deploy" / "healthcheck.py"), port,
                                "fedmkt.v1.ParticipantService"],
                               capture_output=True, text=True, timeout=60)
        assert light.returncode == 0 and light.stdout.strip() == "SERVING"
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
    dead = subprocess.run([sys.executable, str(ROOT / "deploy" / "healthcheck.py"), "1"],
                          capture_output=True, text=True, timeout=60)
    assert dead.returncode == 1 and "UNAVAILABLE" in dead.stderr
