"""What one participant (the server LLM or a client SLM) is: ``ParticipantConfig``.

The same file format serves both roles. A YAML file holds the fields below; environment
variables ``FEDMKT_PARTICIPANT_<FIELD>`` override it (``__`` reaches into a section, e.g.
``FEDMKT_PARTICIPANT_DATA__CLIENT_INDEX=2``; values are read as YAML scalars/lists), and
explicit overrides (command-line flags) win over both. Unknown fields are refused, so a
misspelt setting is reported rather than ignored.

Data: both roles name the same task and partition seed, so they cut the same public/eval split
without any exchange (``fedmkt.data.partition``). The server keeps only ``public`` and
``eval``; a client also keeps its own private part ``client_index``. Optional JSONL files
(``public_file``, ``private_file``, ``eval_file``) replace the matching split, for deployments in
which each party's data really lives only with that party.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedmkt.errors import InvalidArgument
from fedmkt.paths import cache_home

ENV_PREFIX = "FEDMKT_PARTICIPANT_"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
NAME_RE = re.compile(NAME_PATTERN)
MAX_LENGTH = 512

Role = Literal["server", "client"]
StrategyName = Literal["dualmince", "fate", "weighted"]


class ConfigError(InvalidArgument):
    """A participant configuration is invalid; the message names the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraOptions(_Section):
    """LoRA hyper-parameters (paper defaults); ``target_modules=None`` = the architecture's."""

    r: int = Field(8, ge=1)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | None = None


class DataOptions(_Section):
    """Where the samples come from and which part of them this participant holds."""

    task: str = Field(..., min_length=1)  # builtin task name or JSONL path
    num_clients: int = Field(1, ge=1)
    client_index: int = Field(0, ge=0)  # clients only: which private part is this one's
    partition_seed: int = 0
    eval_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    parts: int | None = Field(None, ge=2)  # default num_clients + 1 (paper: 5)
    max_public: int | None = Field(None, ge=1)
    max_private: int | None = Field(None, ge=1)
    max_eval: int | None = Field(None, ge=1)
    public_file: Path | None = None
    private_file: Path | None = None
    eval_file: Path | None = None


class ParticipantConfig(_Section):
    """Everything one participant needs: identity, model, training and data settings."""

    name: str = Field(..., pattern=NAME_PATTERN)
    role: Role
    model: str = Field(..., min_length=1)  # builtin name, checkpoint folder or hub id
    lora: LoraOptions = Field(default_factory=LoraOptions)

    learning_rate: float = Field(2e-4, gt=0)
    local_epochs: int = Field(1, ge=1)
    distill_epochs: int = Field(1, ge=1)
    batch_size: int = Field(4, ge=1)
    eval_batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(MAX_LENGTH, ge=8, le=MAX_LENGTH)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0)  # 0 = no clipping

    top_k: int = Field(16, ge=1, le=1024)
    logit_dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    kd_alpha: float = Field(0.9, ge=0, le=1)  # λ: share of CE in λ·CE + (1-λ)·KD
    temperature: float = Field(1.0, gt=0)  # KD temperature
    selection_temperature: float = Field(1.0, gt=0)  # softmax temperature of "weighted"
    strategy: StrategyName = "dualmince"
    kd_kind: Literal["ce", "kl"] = "ce"
    kd_positions: Literal["answer", "all"] = "answer"

    seed: int = 42
    device: str = "auto"
    dtype: str = "auto"
    data: DataOptions
    state_dir: Path | None = None
    # Results of steps that are provably the same computation (``fedmkt.participant.memo``);
    # default <state_dir>/memo. Runs that share it (a FedMKT run and its baselines) reuse them.
    memo_dir: Path | None = None

    @model_validator(mode="after")
    def _check(self) -> ParticipantConfig:
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must both be in [0, 1), got {self.betas}")
        if self.role == "client" and self.data.client_index >= self.data.num_clients:
            raise ValueError(
                f"data.client_index {self.data.client_index} must be below data.num_clients "
                f"{self.data.num_clients}"
            )
        return self

    @property
    def is_server(self) -> bool:
        return self.role == "server"

    def resolved_memo_dir(self) -> Path:
        return Path(self.memo_dir).expanduser() if self.memo_dir else (
            self.resolved_state_dir() / "memo")

    def resolved_state_dir(self) -> Path:
        """``state_dir``, or ``$FEDMKT_HOME/participants/<name>``; created if missing."""
        path = self.state_dir or cache_home() / "participants" / self.name
        path = Path(path).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path


def env_values(environ: Mapping[str, str] | None = None, prefix: str = ENV_PREFIX
               ) -> dict[str, Any]:
    """Nested field values from ``<prefix><FIELD>[__<SUBFIELD>]`` variables (YAML-parsed).

    Only names that are fields of ``ParticipantConfig`` are taken; the service settings that
    share the prefix (host, ports, ...) are left to their own class.
    """
    environ = os.environ if environ is None else environ
    fields = ParticipantConfig.model_fields
    out: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(prefix):
            continue
        path = key[len(prefix):].lower().split("__")
        if path[0] not in fields:
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"environment variable {key}: not a YAML value: {exc}") from exc
        target = out
        for part in path[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"environment variable {key} conflicts with another one")
        target[path[-1]] = value
    return out


def merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``override``; nested mappings are merged, not replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping a YAML config file holds (empty file = empty mapping)."""
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    return values


def build_config(values: Mapping[str, Any]) -> ParticipantConfig:
    """Validate ``values``; raises ``ConfigError`` naming every field at fault."""
    try:
        return ParticipantConfig.model_validate(dict(values))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid participant config: {problems}") from exc


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    ignore_keys: Collection[str] = (),
) -> ParticipantConfig:
    """Defaults < YAML file ``path`` < environment < ``overrides`` (``None`` values skipped).

    ``ignore_keys``: top-level file keys that belong to someone else (the service settings that
    may share the file: host, ports, log level).
    """
    values = read_yaml(path) if path is not None else {}
    values = {k: v for k, v in values.items() if k not in ignore_keys}
    values = merge(values, env_values(environ))
    values = merge(values, {k: v for k, v in (overrides or {}).items() if v is not None})
    return build_config(values)
