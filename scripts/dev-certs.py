"""Make a private CA and one certificate per fedmkt service, for mTLS in a test deployment.

    .venv/bin/python scripts/dev-certs.py [OUT] [--force]     (default build/certs)

``fedmkt certs OUT --federation deploy/federation.yaml --readable-keys`` (one implementation:
``services/certs.py``): ``ca.pem`` (+ ``ca-key.pem``, 0600) and, for the aligner, the
controller, the run job and every participant of deploy/federation.yaml, ``<name>.pem`` +
``<name>-key.pem``. Each certificate names its service in CN and in a URI SAN (the identity the
services check, e.g. ``fedmkt:participant:llm``), its compose/Kubernetes DNS name and
``localhost`` (the containers' own health checks), is good for server and client authentication
and valid for 30 days. Files already there and valid are kept. Unlike ``fedmkt certs``, files
that cannot be kept (e.g. made by an older dev-certs.py, without the URI SAN) are replaced by a
new CA and new certificates, saying so, as this script always did: CI (scripts/compose-ci.sh,
k8s-validate.sh) reuses its certificate folder. ``--force`` replaces them even when valid. For
anything but a test deployment use your own CA; the service keys are written
world-readable (0644) because compose bind-mounts secrets with the host file's mode and the
services run as uid 10001 (``fedmkt certs`` writes them 0600 unless ``--readable-keys``).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    from services.certs import CertsError, make_certs, names_from_federation

    force = "--force" in argv
    args = [a for a in argv if a != "--force"]
    out = Path(args[0]) if args else ROOT / "build" / "certs"
    names = names_from_federation(ROOT / "deploy" / "federation.yaml")
    try:
        result = make_certs(out, names, force=force, key_mode=0o644)
    except CertsError as exc:
        print(f"dev-certs: replacing what is there with a new CA: {exc}", file=sys.stderr)
        result = make_certs(out, names, force=True, key_mode=0o644)
    done = [*(f"new: {', '.join(result.created)}" for _ in [0] if result.created),
            *(f"kept: {', '.join(result.kept)}" for _ in [0] if result.kept)]
    print(f"{out}: ca.pem and certificates ({'; '.join(done)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
