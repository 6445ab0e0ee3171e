"""What every fedmkt service shares: gRPC server set-up with health and reflection, status
mapping of library errors, Prometheus metrics, structured logs.

Servicers stay thin: they decode the request, call plain library functions, encode the answer.
Errors the library raises carry a status code name (``fedmkt.errors``, ``fedmkt.wire.errors``);
``map_errors`` turns them into the gRPC status of that name with the same message.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter, Histogram

from fedmkt.errors import status_of

log = logging.getLogger("fedmkt.services")

RPC_TOTAL = Counter("fedmkt_rpc_total", "RPCs handled", ["service", "method", "code"])
RPC_SECONDS = Histogram("fedmkt_rpc_seconds", "RPC handling time", ["service", "method"])


def map_errors(method: Callable) -> Callable:
    """Wrap a servicer method (unary or streaming) so that library errors become gRPC statuses.

    An error with a status code (``InvalidArgument``, ``WireError``, ...) aborts the call with
    that code and its message; anything else is logged with its traceback and returned as
    INTERNAL. Either way the service keeps serving. Also records Prometheus metrics.
    """
    service = method.__qualname__.split(".")[0]
    name = method.__name__

    def abort(exc: BaseException, context: grpc.ServicerContext) -> None:
        code = status_of(exc)
        if code is None:
            log.exception("%s.%s failed", service, name)
            RPC_TOTAL.labels(service, name, "INTERNAL").inc()
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {exc}")
        RPC_TOTAL.labels(service, name, code).inc()
        log.info("%s.%s rejected: %s: %s", service, name, code, exc)
        context.abort(grpc.StatusCode[code], str(exc))

    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def stream_wrapper(self, request, context):
            start = time.perf_counter()
            try:
                yield from method(self, request, context)
            except Exception as exc:  # noqa: BLE001
                abort(exc, context)
            else:
                RPC_TOTAL.labels(service, name, "OK").inc()
            finally:
                RPC_SECONDS.labels(service, name).observe(time.perf_counter() - start)

        return stream_wrapper

    @functools.wraps(method)
    def unary_wrapper(self, request, context):
        start = time.perf_counter()
        try:
            result = method(self, request, context)
        except Exception as exc:  # noqa: BLE001
            abort(exc, context)
        else:
            RPC_TOTAL.labels(service, name, "OK").inc()
            return result
        finally:
            RPC_SECONDS.labels(service, name).observe(time.perf_counter() - start)

    return unary_wrapper


def build_server(
    *,
    max_workers: int = 8,
    max_receive_bytes: int = 4 << 20,
    max_send_bytes: int = 4 << 20,
) -> grpc.Server:
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", max_receive_bytes),
            ("grpc.max_send_message_length", max_send_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )


def add_health_and_reflection(
    server: grpc.Server, service_full_names: Iterable[str]
) -> health.HealthServicer:
    """Register ``grpc.health.v1`` (overall and per service: SERVING) and server reflection."""
    names = list(service_full_names)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ["", *names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME],
        server,
    )
    return health_servicer


def bind(server: grpc.Server, host: str, port: int,
         credentials: grpc.ServerCredentials | None = None) -> int:
    """Bind the gRPC port (TLS when ``credentials`` are given); returns the port actually bound
    (0 asks for a free one)."""
    address = f"{host}:{port}"
    bound = (server.add_insecure_port(address) if credentials is None
             else server.add_secure_port(address, credentials))
    if bound == 0:
        raise RuntimeError(f"cannot bind gRPC to {host}:{port} (in use?)")
    return bound


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO", as_json: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if as_json
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
