"""``fedmkt serve controller``: the round controller behind gRPC (ControllerService).

State (the SQLite run store) lives in ``<state_dir>/controller.db``. On start the controller
resumes every run that was running when it stopped (unless ``resume`` is off).
"""

from __future__ import annotations

import logging

from fedmkt.federation.manager import RunManager
from fedmkt.federation.store import RunStore
from fedmkt.wire.v1 import controller_pb2, controller_pb2_grpc
from services.common import add_health_and_reflection, bind, build_server, configure_logging
from services.controller.clients import check_endpoints, connect
from services.controller.grpc_service import ControllerServicer
from services.settings import ControllerSettings
from services.signals import StopSignal

log = logging.getLogger("fedmkt.controller")

SERVICE_NAME = controller_pb2.DESCRIPTOR.services_by_name["ControllerService"].full_name


class ControllerProcess:
    """Owns the run store, the run manager and the gRPC server."""

    def __init__(self, settings: ControllerSettings, manager: RunManager | None = None) -> None:
        self.settings = settings
        state_dir = settings.resolved_state_dir()
        self.manager = manager or RunManager(RunStore(state_dir / "controller.db"), connect,
                                             validate=check_endpoints)
        from fedmkt.federation.telemetry import record

        self.manager.hub.add_listener(record)
        self.grpc = build_server(max_workers=settings.workers)
        controller_pb2_grpc.add_ControllerServiceServicer_to_server(
            ControllerServicer(self.manager), self.grpc)
        self.health = add_health_and_reflection(self.grpc, [SERVICE_NAME])
        self.grpc_port = bind(self.grpc, settings.host, settings.grpc_port,
                              settings.server_credentials())

    def start(self) -> None:
        self.grpc.start()
        log.info("controller gRPC on %s:%d (state in %s)", self.settings.host, self.grpc_port,
                 self.settings.resolved_state_dir())
        if self.settings.metrics_port > 0:
            from prometheus_client import start_http_server

            start_http_server(self.settings.metrics_port, addr=self.settings.host)
            log.info("metrics on http://%s:%d/metrics", self.settings.host,
                     self.settings.metrics_port)
        if self.settings.resume:
            resumed = self.manager.resume_interrupted()
            if resumed:
                log.info("resuming interrupted runs: %s", ", ".join(resumed))

    def stop(self, grace: float = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self.manager.shutdown(timeout=grace)
        self.grpc.stop(grace).wait()
        self.manager.store.close()


def serve(settings: ControllerSettings) -> None:
    configure_logging(settings.log_level, settings.log_json)
    process = ControllerProcess(settings)
    process.start()
    stop = StopSignal()  # before READY: a SIGTERM from then on stops the service cleanly
    print(f"READY controller grpc={process.grpc_port}", flush=True)
    stop.wait()
    process.stop()
