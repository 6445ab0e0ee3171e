"""Service settings: defaults < config file (YAML) < environment (FEDMKT_<SERVICE>_*) < flags."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fedmkt.paths import cache_home

S = TypeVar("S", bound=BaseSettings)


class ServiceSettings(BaseSettings):
    """What every service has: where it listens, where it keeps state, how it logs."""

    model_config = SettingsConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    grpc_port: int = 0  # 0 = a free port, printed at start
    state_dir: Path | None = None
    workers: int = 8
    log_level: str = "INFO"
    log_json: bool = False
    # TLS (PEM files). With tls_cert + tls_key the gRPC port serves TLS; adding tls_client_ca
    # makes it mTLS: every caller must present a certificate signed by that CA.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # With mTLS each call is checked against the identity its client certificate names
    # (services.identity.RULES: e.g. only fedmkt:controller may call ReceiveKnowledge). More
    # callers per RPC: {"ParticipantService/FetchAdapter": ["fedmkt:operator:backup"]}
    # (env: JSON). Patterns: an identity, fedmkt:<kind>:* or *.
    tls_allow: dict[str, list[str]] = {}

    @model_validator(mode="after")
    def _tls_files(self) -> ServiceSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mTLS) needs tls_cert and tls_key as well")
        for name in ("tls_cert", "tls_key", "tls_client_ca"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: no such file {path}")
        if self.tls_allow:
            from services.identity import check_allow

            check_allow(self.tls_allow)
            if self.tls_client_ca is None:
                raise ValueError("tls_allow needs mTLS (tls_client_ca): without client "
                                 "certificates there is no identity to check")
        return self

    def server_credentials(self):  # -> grpc.ServerCredentials | None
        """TLS (or mTLS) credentials for the gRPC port; None = plaintext. mTLS credentials
        carry the identity policy (``fedmkt_identity_policy``) that ``services.common.bind``
        switches on."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        import grpc

        ca = Path(self.tls_client_ca).read_bytes() if self.tls_client_ca else None
        credentials = grpc.ssl_server_credentials(
            [(Path(self.tls_key).read_bytes(), Path(self.tls_cert).read_bytes())],
            root_certificates=ca, require_client_auth=ca is not None)
        if ca is not None:
            from services.identity import IdentityPolicy

            credentials.fedmkt_identity_policy = IdentityPolicy.from_setting(self.tls_allow)
        return credentials


class AlignerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FEDMKT_ALIGNER_", extra="forbid")

    grpc_port: int = 50051
    http_port: int = 8080  # 0 = a free port; -1 = no HTTP API
    max_message_mb: int = 128  # tokenizer registration carries whole tokenizer files
    # gRPC limits: at most `workers` calls at once (further ones get RESOURCE_EXHAUSTED), of
    # them at most `max_streams` AlignKnowledge (or other) streams (by default 16, or `workers`
    # if fewer); a stream whose client sends nothing for `stream_idle_timeout_s` while the
    # aligner waits is ended (DEADLINE_EXCEEDED, 0 = never); `health_workers` more threads
    # answer only grpc.health.v1 Check.
    workers: int = 24
    max_streams: int = 16
    stream_idle_timeout_s: float = 300.0
    health_workers: int = 2
    # tokenizers registered from uploaded files (builtins not counted); more are refused with
    # RESOURCE_EXHAUSTED. Each costs disk for good and memory while loaded.
    max_tokenizers: int = 64

    @model_validator(mode="after")
    def _limits(self) -> AlignerSettings:
        if self.workers < 1 or self.health_workers < 1:
            raise ValueError("workers and health_workers must be at least 1")
        if "max_streams" not in self.model_fields_set:  # the default follows fewer workers
            self.max_streams = min(self.max_streams, self.workers)
        if not 0 <= self.max_streams <= self.workers:
            raise ValueError(f"max_streams must be in 0..workers ({self.workers}), "
                             f"got {self.max_streams}")
        if self.max_tokenizers < 1:
            raise ValueError("max_tokenizers must be at least 1")
        if self.stream_idle_timeout_s < 0:
            raise ValueError("stream_idle_timeout_s must be >= 0 (0 = no idle timeout)")
        return self

    def resolved_state_dir(self) -> Path:
        path = self.state_dir or cache_home() / "aligner"
        path.mkdir(parents=True, exist_ok=True)
        return path


class SettingsError(ValueError):
    pass


def load_settings(cls: type[S], config_file: Path | None = None, **flags) -> S:
    """Settings of ``cls`` from a YAML file, the environment and command-line flags."""
    file_values: dict = {}
    if config_file is not None:
        try:
            file_values = yaml.safe_load(Path(config_file).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsError(f"cannot read config file {config_file}: {exc}") from exc
        if not isinstance(file_values, dict):
            raise SettingsError(f"config file {config_file} must hold a mapping")
    try:
        from_env = cls()
        env_values = {k: getattr(from_env, k) for k in from_env.model_fields_set}
        given = {k: v for k, v in flags.items() if v is not None}
        return cls(**{**file_values, **env_values, **given})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise SettingsError(f"invalid {cls.__name__}: {problems}") from exc


class ParticipantSettings(ServiceSettings):
    """How a participant service (server or client role) runs. What the participant *is* (model,
    data, training) is a ``fedmkt.participant.config.ParticipantConfig``; both may share one YAML
    file and the ``FEDMKT_PARTICIPANT_`` environment prefix."""

    model_config = SettingsConfigDict(env_prefix="FEDMKT_PARTICIPANT_", extra="forbid")

    grpc_port: int = 0  # 0 = a free port, printed at start (READY <name> grpc=<port>)
    metrics_port: int = -1  # Prometheus /metrics; 0 or -1 = off
    max_message_mb: int = 8  # knowledge chunks are 1 MiB; adapters travel in 1 MiB chunks
    busy_timeout_s: float = 60.0  # how long a call waits for the one running before it


class ControllerSettings(ServiceSettings):
    """How the round controller runs; what it runs comes with each StartRun (a federation
    config). Its run store lives in ``<state_dir>/controller.db``."""

    model_config = SettingsConfigDict(env_prefix="FEDMKT_CONTROLLER_", extra="forbid")

    grpc_port: int = 50050
    metrics_port: int = -1  # Prometheus /metrics; 0 or -1 = off
    resume: bool = True  # resume the runs that were running when the controller stopped

    def resolved_state_dir(self) -> Path:
        path = self.state_dir or cache_home() / "controller"
        path.mkdir(parents=True, exist_ok=True)
        return path
