"""Make a private CA and one certificate per fedmkt service, for mTLS in a test deployment.

    .venv/bin/python scripts/dev-certs.py [OUT] [--force]     (default build/certs)

``fedmkt certs OUT --federation deploy/federation.yaml --readable-keys`` (one implementation:
``services/certs.py``): ``ca.pem`` (+ ``ca-key.pem``, 0600) and, for the aligner, the
controller, the run job and every participant of deploy/federation.yaml, ``<name>.pem`` +
``<name>-key.pem``. Each certificate names its service in CN and in a URI SAN (the identity the
services check, e.g. ``fedmkt:participant:llm``), its compose/Kubernetes DNS name and
``localhost`` (the containers' own health checks), is good for server and client authentication
and valid for 30 days. Files already there and valid are kept; anything else is refused unless
``--force``. For anything but a test deployment use your own CA; the service keys are written
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
    try:
        result = make_certs(out, names_from_federation(ROOT / "deploy" / "federation.yaml"),
                            force=force, key_mode=0o644)
    except CertsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    done = [*(f"new: {', '.join(result.created)}" for _ in [0] if result.created),
            *(f"kept: {', '.join(result.kept)}" for _ in [0] if result.kept)]
    print(f"{out}: ca.pem and certificates ({'; '.join(done)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
