"""``fedmkt serve aligner``: the gRPC AlignerService and the HTTP/JSON API in one process."""

from __future__ import annotations

import logging
import threading

from fedmkt.align.engine import AlignmentEngine
from fedmkt.wire.v1 import aligner_pb2, aligner_pb2_grpc
from services.aligner.grpc_service import AlignerServicer
from services.common import (
    CallLimits,
    add_health_and_reflection,
    bind,
    build_server,
    configure_logging,
)
from services.settings import AlignerSettings

log = logging.getLogger("fedmkt.aligner")


class AlignerProcess:
    """Owns the engine, the gRPC server and (optionally) the HTTP server."""

    def __init__(self, settings: AlignerSettings) -> None:
        self.settings = settings
        env = "FEDMKT_ALIGNER_"
        self.engine = AlignmentEngine(
            settings.resolved_state_dir(), max_tokenizers=settings.max_tokenizers,
            max_tokenizers_setting=f"max_tokenizers / {env}MAX_TOKENIZERS")
        limit = settings.max_message_mb << 20
        limits = CallLimits(
            max_streams=settings.max_streams,
            stream_idle_timeout_s=settings.stream_idle_timeout_s,
            health_workers=settings.health_workers,
            setting_names={n: f"{n} / {env}{n.upper()}"
                           for n in ("workers", "max_streams", "stream_idle_timeout_s")})
        self.grpc = build_server(max_workers=settings.workers, max_receive_bytes=limit,
                                 max_send_bytes=limit, limits=limits)
        aligner_pb2_grpc.add_AlignerServiceServicer_to_server(
            AlignerServicer(self.engine), self.grpc)
        self.health = add_health_and_reflection(
            self.grpc, [aligner_pb2.DESCRIPTOR.services_by_name["AlignerService"].full_name])
        self.grpc_port = bind(self.grpc, settings.host, settings.grpc_port,
                              settings.server_credentials())
        self.http_server = None
        self.http_port = None
        self._http_thread: threading.Thread | None = None

    def start(self) -> None:
        self.grpc.start()
        log.info("aligner gRPC on %s:%d (state in %s)", self.settings.host, self.grpc_port,
                 self.settings.resolved_state_dir())
        if self.settings.http_port >= 0:
            self._start_http()

    def _start_http(self) -> None:
        import socket

        import uvicorn

        from services.aligner.http_api import create_app

        family = socket.AF_INET6 if ":" in self.settings.host else socket.AF_INET
        # proto IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that
        # say they are TCP; with Nagle and delayed ACKs every keep-alive request waited ~40 ms.
        # The listening socket's TCP_NODELAY is inherited by accepted ones on Linux, too.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((self.settings.host, self.settings.http_port))
        sock.listen(2048)  # connections wait in the backlog until uvicorn runs: no refusal
        self.http_port = sock.getsockname()[1]
        # JSON carries files as base64 (4/3 the bytes): the same limit as gRPC plus that inflation.
        max_body = (self.settings.max_message_mb << 20) * 4 // 3
        config = uvicorn.Config(create_app(self.engine, max_body_bytes=max_body),
                                log_level="warning", lifespan="off")
        self.http_server = uvicorn.Server(config)
        self.http_server.install_signal_handlers = lambda: None  # the main thread owns signals
        self._http_thread = threading.Thread(
            target=self.http_server.run, kwargs={"sockets": [sock]}, name="http", daemon=True)
        self._http_thread.start()
        log.info("aligner HTTP on http://%s:%d (OpenAPI at /openapi.json)", self.settings.host,
                 self.http_port)

    def stop(self, grace: float = 2.0) -> None:
        self.health.enter_graceful_shutdown()
        if self.http_server is not None:
            self.http_server.should_exit = True
            if self._http_thread is not None:
                self._http_thread.join(timeout=grace + 3)
        self.grpc.stop(grace).wait()


def serve(settings: AlignerSettings) -> None:
    from services.signals import StopSignal

    configure_logging(settings.log_level, settings.log_json)
    process = AlignerProcess(settings)
    process.start()
    stop = StopSignal()  # before READY: a SIGTERM from then on stops the service cleanly
    print(f"READY aligner grpc={process.grpc_port} http={process.http_port}", flush=True)
    stop.wait()
    process.stop()
