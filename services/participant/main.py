"""``fedmkt serve server`` / ``fedmkt serve client``: one participant behind gRPC.

Settings come from one YAML file that holds the participant's configuration
(``ParticipantConfig``) and, optionally, the service's own settings (``ParticipantSettings``:
host, grpc_port, metrics_port, ...), then the environment (``FEDMKT_PARTICIPANT_*``), then
command-line flags. ``state_dir`` belongs to both: the flag, when given, wins for both.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fedmkt.participant.config import ParticipantConfig, env_values, load_config, read_yaml
from fedmkt.participant.core import Participant
from fedmkt.wire.v1 import participant_pb2, participant_pb2_grpc
from services.common import add_health_and_reflection, bind, build_server, configure_logging
from services.participant.grpc_service import ParticipantServicer
from services.settings import ParticipantSettings, SettingsError

log = logging.getLogger("fedmkt.participant")

SERVICE_NAME = participant_pb2.DESCRIPTOR.services_by_name["ParticipantService"].full_name
SERVICE_KEYS = frozenset(ParticipantSettings.model_fields) - {"state_dir"}


def load_participant(
    config_file: Path | None,
    *,
    role: str | None = None,
    service_flags: dict[str, Any] | None = None,
    config_overrides: dict[str, Any] | None = None,
) -> tuple[ParticipantSettings, ParticipantConfig]:
    """Both halves of a participant's settings (see module docstring). ``role``, when given (the
    CLI command), fills a missing ``role`` and must agree with one that is set."""
    file_values = read_yaml(config_file) if config_file is not None else {}
    flags = {k: v for k, v in (service_flags or {}).items() if v is not None}
    service_values = {k: v for k, v in file_values.items() if k in SERVICE_KEYS}
    try:
        from_env = ParticipantSettings()
        env = {k: getattr(from_env, k) for k in from_env.model_fields_set}
        settings = ParticipantSettings(**{**service_values, **env, **flags})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors())
        raise SettingsError(f"invalid ParticipantSettings: {problems}") from exc
    overrides = dict(config_overrides or {})
    if "state_dir" in flags:
        overrides["state_dir"] = flags["state_dir"]
    if role is not None and "role" not in file_values and "role" not in env_values():
        overrides["role"] = role
    config = load_config(config_file, overrides=overrides, ignore_keys=SERVICE_KEYS)
    if role is not None and config.role != role:
        raise SettingsError(f"the config says role {config.role!r} but the {role!r} service was "
                            "started; fix the config or run the other command")
    return settings, config


class ParticipantProcess:
    """Owns the participant, its gRPC server (health, reflection) and optional metrics."""

    def __init__(self, settings: ParticipantSettings, config: ParticipantConfig,
                 participant: Participant | None = None) -> None:
        self.settings = settings
        self.config = config
        self.participant = participant or Participant(config,
                                                      busy_timeout=settings.busy_timeout_s)
        limit = settings.max_message_mb << 20
        self.grpc = build_server(max_workers=settings.workers, max_receive_bytes=limit,
                                 max_send_bytes=limit)
        self.servicer = ParticipantServicer(self.participant)
        participant_pb2_grpc.add_ParticipantServiceServicer_to_server(self.servicer, self.grpc)
        self.health = add_health_and_reflection(self.grpc, [SERVICE_NAME])
        self.grpc_port = bind(self.grpc, settings.host, settings.grpc_port,
                              settings.server_credentials())
        self.metrics_port: int | None = None

    def start(self) -> None:
        self.grpc.start()
        log.info("participant %s (%s) gRPC on %s:%d", self.config.name, self.config.role,
                 self.settings.host, self.grpc_port)
        if self.settings.metrics_port > 0:
            from prometheus_client import start_http_server

            start_http_server(self.settings.metrics_port, addr=self.settings.host)
            self.metrics_port = self.settings.metrics_port
            log.info("metrics on http://%s:%d/metrics", self.settings.host, self.metrics_port)

    def stop(self, grace: float = 2.0) -> None:
        self.health.enter_graceful_shutdown()
        self.servicer.cancel_all()
        self.grpc.stop(grace).wait()


def serve(settings: ParticipantSettings, config: ParticipantConfig) -> None:
    from services.signals import StopSignal

    configure_logging(settings.log_level, settings.log_json)
    process = ParticipantProcess(settings, config)
    process.start()
    stop = StopSignal()  # before READY: a SIGTERM from then on stops the service cleanly
    print(f"READY {config.name} grpc={process.grpc_port}", flush=True)
    stop.wait()
    process.stop()
