"""Container health check: exit 0 when a fedmkt gRPC service answers grpc.health.v1 SERVING.

    python /app/deploy/healthcheck.py PORT|HOST:PORT [SERVICE]

Lighter than `fedmkt health` (imports grpc only; compose runs it every few seconds in every
container). With TLS on (FEDMKT_<SERVICE>_TLS_CERT/_KEY in the environment) it connects with TLS,
presenting the service's own certificate (mTLS) and trusting FEDMKT_HEALTH_CA, else the
service's client CA; the certificate must name ``localhost`` (scripts/dev-certs.py does).
"""

from __future__ import annotations

import os
import sys


def _tls_files() -> tuple[str, str, str] | None:
    for prefix in ("FEDMKT_PARTICIPANT_", "FEDMKT_ALIGNER_", "FEDMKT_CONTROLLER_"):
        cert, key = os.environ.get(prefix + "TLS_CERT"), os.environ.get(prefix + "TLS_KEY")
        if cert and key:
            ca = os.environ.get("FEDMKT_HEALTH_CA") or os.environ.get(prefix + "TLS_CLIENT_CA")
            return (ca or "", cert, key)
    return None


def main(argv: list[str]) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = argv[0] if argv else "50060"
    service = argv[1] if len(argv) > 1 else ""
    endpoint = target if ":" in target else f"localhost:{target}"
    tls = _tls_files()
    if tls is None:
        channel = grpc.insecure_channel(endpoint)
    else:
        ca, cert, key = tls

        def read(path: str) -> bytes | None:
            return open(path, "rb").read() if path else None

        channel = grpc.secure_channel(endpoint, grpc.ssl_channel_credentials(
            root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert)))
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5)
        except grpc.RpcError as exc:
            print(f"{endpoint}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
