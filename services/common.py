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
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter, Histogram

from fedmkt.errors import status_of
from services.identity import IdentityGate, PermissionDenied

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
        code = status_of(exc) or (PermissionDenied.code if isinstance(exc, PermissionDenied)
                                  else None)
        # grpc raises a bare RpcError from the request iterator when the client has gone; calls
        # this handler made raise subclasses (they stay INTERNAL)
        if code is None and type(exc) is grpc.RpcError:
            RPC_TOTAL.labels(service, name, "CANCELLED").inc()
            log.info("%s.%s: the client went away (%s)", service, name, exc)
            context.abort(grpc.StatusCode.CANCELLED, "the client cancelled the call")
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


# How often a caller pings an open connection (services.controller.clients.CHANNEL_OPTIONS);
# servers accept pings at half this interval.
KEEPALIVE_TIME_MS = 30_000

# Calls that are never counted against the limits: a health check is cheap and must be answered
# whatever user traffic does (Kubernetes restarts a pod whose probe fails).
HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def build_server(
    *,
    max_workers: int = 8,
    max_receive_bytes: int = 4 << 20,
    max_send_bytes: int = 4 << 20,
    limits: CallLimits | None = None,
) -> grpc.Server:
    """A gRPC server with ``max_workers`` threads for calls.

    With ``limits``, at most ``max_workers`` user calls (``limits.max_streams`` of them streams)
    run at once, each further call is refused with RESOURCE_EXHAUSTED at once instead of
    queueing, streams whose client goes quiet are ended, and ``limits.health_workers`` more
    threads are kept for ``grpc.health.v1.Health/Check``, which is never counted: user traffic
    cannot starve the health check. (gRPC's own ``maximum_concurrent_rpcs`` refuses health
    checks as well, so it is not used.)

    Every server has an ``IdentityGate`` (``services.identity``), idle until :func:`bind` is
    given mTLS credentials: then each call is checked against who its client certificate names.
    """
    interceptors: list[grpc.ServerInterceptor] = []
    threads = max_workers
    if limits is not None:
        interceptors.append(CallLimiter(limits, max_calls=max_workers))
        threads = max_workers + limits.health_workers
    gate = IdentityGate()  # inside the limiter: it sees messages already decoded and watched
    interceptors.append(gate)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc"),
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", max_receive_bytes),
            ("grpc.max_send_message_length", max_send_bytes),
            ("grpc.so_reuseport", 0),
            # Callers ping every KEEPALIVE_TIME_MS during calls that send nothing for minutes
            # (an evaluation or a distillation of a real model); gRPC's default accepts a ping
            # only every 5 minutes and answers more with GOAWAY "too_many_pings", killing the
            # call. Accept pings this often (a caller pinging faster still gets GOAWAY).
            ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
            ("grpc.http2.max_ping_strikes", 2),
        ],
    )
    server.fedmkt_identity_gate = gate
    return server


class CallLimits:
    """Resource limits of one gRPC server (see :func:`build_server`).

    ``max_streams``: calls with a request or response stream open at once (0 = no cap beyond
    the worker count); ``stream_idle_timeout_s``: a client stream that sends nothing for this
    long while the service waits for its next message is ended with DEADLINE_EXCEEDED
    (0 = never); ``health_workers``: threads reserved for health checks; ``setting_names``:
    the settings a refusal message names, so that an operator knows what to raise.
    """

    def __init__(self, *, max_streams: int = 0, stream_idle_timeout_s: float = 0.0,
                 health_workers: int = 2, setting_names: dict[str, str] | None = None) -> None:
        if max_streams < 0 or stream_idle_timeout_s < 0 or health_workers < 1:
            raise ValueError("max_streams and stream_idle_timeout_s must be >= 0 and "
                             "health_workers >= 1")
        self.max_streams = max_streams
        self.stream_idle_timeout_s = stream_idle_timeout_s
        self.health_workers = health_workers
        self.setting_names = {"workers": "workers", "max_streams": "max_streams",
                              "stream_idle_timeout_s": "stream_idle_timeout_s",
                              **(setting_names or {})}


class CallLimiter(grpc.ServerInterceptor):
    """Counts user calls while their handler runs; refuses those over the limits; ends idle
    client streams. Health checks pass untouched."""

    def __init__(self, limits: CallLimits, max_calls: int) -> None:
        self.limits = limits
        self.max_calls = max_calls
        self._lock = threading.Lock()
        self.calls = 0    # user calls whose handler is running
        self.streams = 0  # of which streaming

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method == HEALTH_CHECK:
            return handler
        streaming = handler.request_streaming or handler.response_streaming
        name = method.rsplit("/", 1)[-1]
        deserialize = _tolerant(handler.request_deserializer)
        if handler.request_streaming and handler.response_streaming:
            inner = handler.stream_stream

            def stream_stream(requests, context):
                release = self._admit(context, streaming, name)
                try:
                    yield from inner(self._watched(requests, context, name), context)
                except (StreamIdle, BadMessage) as exc:  # a handler without map_errors
                    _ended_idle(context, exc)
                finally:
                    release()

            return grpc.stream_stream_rpc_method_handler(
                stream_stream, deserialize, handler.response_serializer)
        if handler.request_streaming:
            inner = handler.stream_unary

            def stream_unary(requests, context):
                release = self._admit(context, streaming, name)
                try:
                    return inner(self._watched(requests, context, name), context)
                except (StreamIdle, BadMessage) as exc:  # a handler without map_errors
                    _ended_idle(context, exc)
                finally:
                    release()

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, deserialize, handler.response_serializer)
        if handler.response_streaming:
            inner = handler.unary_stream

            def unary_stream(request, context):
                _refuse_undecodable(request, context, name)
                release = self._admit(context, streaming, name)
                try:
                    yield from inner(request, context)
                finally:
                    release()

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, deserialize, handler.response_serializer)
        inner = handler.unary_unary

        def unary_unary(request, context):
            _refuse_undecodable(request, context, name)
            release = self._admit(context, streaming, name)
            try:
                return inner(request, context)
            finally:
                release()

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, deserialize, handler.response_serializer)

    def _admit(self, context, streaming: bool, name: str) -> Callable[[], None]:
        """Count the call in, or abort it with RESOURCE_EXHAUSTED; returns the release (safe to
        call more than once; also run when the RPC ends, as a cancelled stream's generator may
        never be closed)."""
        names = self.limits.setting_names
        with self._lock:
            if self.calls >= self.max_calls:
                refusal = (f"{name}: the service is busy, {self.calls} calls in progress "
                           f"(limit {self.max_calls}, setting {names['workers']}); retry later")
            elif streaming and self.limits.max_streams and \
                    self.streams >= self.limits.max_streams:
                refusal = (f"{name}: too many open streams, {self.streams} in progress "
                           f"(limit {self.limits.max_streams}, setting "
                           f"{names['max_streams']}); retry later")
            else:
                refusal = None
                self.calls += 1
                self.streams += streaming
        if refusal is not None:
            RPC_TOTAL.labels("limits", name, "RESOURCE_EXHAUSTED").inc()
            log.warning("refused: %s", refusal)
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
        done = threading.Event()

        def release() -> None:
            with self._lock:
                if done.is_set():
                    return
                done.set()
                self.calls -= 1
                self.streams -= streaming

        if not context.add_callback(release):
            release()  # the call has already ended
        return release

    def _watched(self, requests: Iterator, context, name: str) -> Iterator:
        timeout = self.limits.stream_idle_timeout_s
        if timeout:
            requests = _idle_limited(requests, context, timeout, name,
                                     self.limits.setting_names["stream_idle_timeout_s"])
        return _decodable(requests, context, name)


class _Undecodable:
    """Stands for a message that did not parse (gRPC would answer INTERNAL and log a
    traceback; it is the caller's bad input)."""

    def __init__(self, type_name: str, error: BaseException) -> None:
        self.type_name = type_name
        self.error = error


def _tolerant(deserializer):
    if deserializer is None:
        return None
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    type_name = getattr(descriptor, "full_name", None) or "request message"

    def deserialize(data: bytes):
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the caller's
            return _Undecodable(type_name, exc)

    return deserialize


def _refuse_undecodable(request, context, name: str) -> None:
    if isinstance(request, _Undecodable):
        RPC_TOTAL.labels("limits", name, "INVALID_ARGUMENT").inc()
        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      f"{name}: the request is not a valid {request.type_name} protobuf message "
                      f"({request.error}); send one serialized from the fedmkt.v1 .proto files")


def _decodable(requests: Iterator, context, name: str) -> Iterator:
    for index, request in enumerate(requests):
        if isinstance(request, _Undecodable):
            raise BadMessage(f"{name}: message {index} of the stream is not a valid "
                             f"{request.type_name} protobuf message ({request.error}); send "
                             "messages serialized from the fedmkt.v1 .proto files")
        yield request


_END = object()


class StreamIdle(Exception):  # noqa: N818 - named for what happened
    """A client stream sent nothing within the idle timeout (DEADLINE_EXCEEDED)."""

    code = "DEADLINE_EXCEEDED"


class BadMessage(Exception):  # noqa: N818
    """A streamed message that does not parse (INVALID_ARGUMENT)."""

    code = "INVALID_ARGUMENT"


def _ended_idle(context, exc: StreamIdle | BadMessage) -> None:
    code = grpc.StatusCode.DEADLINE_EXCEEDED if isinstance(exc, StreamIdle) else \
        grpc.StatusCode.INVALID_ARGUMENT
    context.abort(code, str(exc))


def _idle_limited(requests: Iterator, context, timeout: float, name: str,
                  setting: str) -> Iterator:
    """The client's messages, read by a helper thread so that waiting for the next one can time
    out: when none arrives within ``timeout`` seconds the call is aborted with
    DEADLINE_EXCEEDED. The helper holds at most one message (flow control still applies) and
    ends with the call."""
    box: queue.Queue = queue.Queue(maxsize=1)
    finished = threading.Event()
    context.add_callback(finished.set)

    def put(item) -> bool:
        while not finished.is_set():
            try:
                box.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        try:
            for message in requests:
                if not put(message):
                    return
            put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the handler thread
            put(exc)

    threading.Thread(target=pump, name=f"grpc-read-{name}", daemon=True).start()
    try:
        while True:
            try:
                item = box.get(timeout=timeout)
            except queue.Empty:
                RPC_TOTAL.labels("limits", name, "DEADLINE_EXCEEDED").inc()
                message = (f"{name}: the client sent nothing for {timeout:g} s (setting "
                           f"{setting}); stream closed. Send each message within that time, "
                           "or close the stream when done")
                log.info("ended idle stream: %s", message)
                raise StreamIdle(message) from None
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        finished.set()


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
    (0 asks for a free one). mTLS credentials from ``ServiceSettings.server_credentials`` carry
    an identity policy: binding them switches the server's identity checks on."""
    policy = getattr(credentials, "fedmkt_identity_policy", None)
    if policy is not None:
        gate = getattr(server, "fedmkt_identity_gate", None)
        if gate is None:
            raise RuntimeError("mTLS with identity checks needs a server from build_server()")
        gate.activate(policy)
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
