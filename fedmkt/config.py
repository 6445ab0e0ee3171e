"""The federation config: one YAML file that describes a whole FedMKT run.

It names the task and how its data is split, every participant (the server LLM and the client
SLMs: model, tokenizer, LoRA, learning rate, epochs, where it listens), how knowledge is
computed, aligned and selected (top-k, canonical mode, sequence alignment, strategy, λ,
temperature), and how the controller enforces time (per-step deadlines, quorum). See
``examples/`` for one file per scenario.

``load_federation_config(path)`` / ``parse_federation_config(text)`` validate with pydantic and
raise ``FederationConfigError`` whose message names every bad field
(``participants[1].learning_rate: ...``), so a person can fix the file without reading code.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
ENDPOINT_PATTERN = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
MAX_ROUNDS = 1000
MAX_TOP_K = 1024


class FederationConfigError(ValueError):
    """A federation config that cannot be used; the message names each bad field."""

    code = "INVALID_ARGUMENT"


class Scenario(StrEnum):
    HETEROGENEOUS = "heterogeneous"  # SLMs of different architectures / tokenizers
    HOMOGENEOUS = "homogeneous"  # all SLMs alike (optional FedAvg of their LoRA weights)
    ONE_TO_ONE = "one_to_one"  # one SLM
    LLM_TO_SLM = "llm_to_slm"  # knowledge flows LLM → SLMs only; the LLM is not trained


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoraConfig(_Strict):
    """LoRA hyper-parameters (paper defaults). ``target_modules`` None = the model's defaults."""

    r: int = Field(8, ge=1, le=1024)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | None = None

    @field_validator("target_modules")
    @classmethod
    def _modules(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or not all(m.strip() for m in value)):
            raise ValueError("must be a non-empty list of module names (or left out)")
        return value


class ParticipantSpec(_Strict):
    """One participant of the federation."""

    name: str
    role: Literal["server", "client"]
    model: str = Field(min_length=1)  # builtin name, checkpoint folder or hub id
    tokenizer: str | None = None  # builtin tokenizer name or folder; None = the model's own
    lora: LoraConfig = LoraConfig()
    learning_rate: float = Field(2e-4, gt=0, le=1.0)
    local_epochs: int = Field(1, ge=1, le=1000)  # TrainLocal (clients)
    distill_epochs: int = Field(1, ge=1, le=1000)
    batch_size: int = Field(4, ge=1, le=4096)
    endpoint: str | None = None  # host:port of its ParticipantService; the embedded run fills it
    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = Field(None, ge=1, le=512)  # torch threads (embedded run)
    # Further ParticipantConfig settings passed through as they are (grad_accum, warmup_ratio…).
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_name(value)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return _check_endpoint(value)


class TaskConfig(_Strict):
    """The task and how its data is split (DESIGN §1: held-out eval, then 1 public + private)."""

    name: str = Field(min_length=1)  # builtin task (rte, boolq, ...) or a JSONL file
    eval_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    parts: int | None = Field(None, ge=2)  # None = clients + 1; the paper uses 5
    max_public: int | None = Field(None, ge=1)
    max_private: int | None = Field(None, ge=1)
    max_eval: int | None = Field(None, ge=1)
    max_length: int = Field(512, ge=16, le=512)


class KnowledgeConfig(_Strict):
    top_k: int = Field(16, ge=1, le=MAX_TOP_K)
    logit_dtype: Literal["float16", "bfloat16", "float32"] = "float16"


class AlignmentConfig(_Strict):
    canonical: Literal["surface", "fate"] = "surface"
    method: Literal["dtw", "offsets"] = "dtw"


class SelectionConfig(_Strict):
    strategy: Literal["dualmince", "fate", "weighted"] = "dualmince"
    kd_alpha: float = Field(0.9, ge=0.0, le=1.0)  # λ: loss = λ·CE + (1-λ)·KD
    temperature: float = Field(1.0, gt=0.0, le=100.0)


class DeadlinesConfig(_Strict):
    """Seconds each step may take per participant; a client that misses one is dropped from
    that round (while the quorum holds). ``None`` = ``default``."""

    default: float = Field(1800.0, gt=0)
    describe: float = Field(120.0, gt=0)
    train_local: float | None = Field(None, gt=0)
    client_knowledge: float | None = Field(None, gt=0)
    distill: float | None = Field(None, gt=0)
    server_knowledge: float | None = Field(None, gt=0)
    fedavg: float | None = Field(None, gt=0)
    evaluate: float | None = Field(None, gt=0)
    # How long a step keeps being retried while the server or the aligner is unreachable
    # (a restart); 0 = fail at once. Unreachable clients are dropped from the round instead.
    retry_unavailable: float = Field(120.0, ge=0)

    def seconds(self, step: str) -> float:
        value = getattr(self, step, None)
        return float(self.default if value is None else value)


class QuorumConfig(_Strict):
    """How many clients must complete a round for it to count."""

    min_clients: int = Field(1, ge=1)


class TlsConfig(_Strict):
    """mTLS files (PEM) the controller uses to call the services; relative to the config file."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None  # override the name checked in the server certificate

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("give both cert and key (client certificate) or neither")
        return self


class AlignerEndpoint(_Strict):
    endpoint: str | None = None  # host:port; the embedded run fills it

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return _check_endpoint(value)


class FederationConfig(_Strict):
    """A whole federation run. Field meanings: see the module docstring and ``examples/``."""

    name: str
    seed: int = Field(42, ge=0, le=2**32 - 1)
    rounds: int = Field(3, ge=1, le=MAX_ROUNDS)
    scenario: Scenario = Scenario.HETEROGENEOUS
    fedavg: bool = False  # homogeneous only: average the clients' LoRA weights after each round
    # False = a baseline run: no knowledge transfer (clients train on private data only, the
    # server distils with no teacher = CE on public data only)
    transfer: bool = True
    # Baseline runs only: after their local training the clients also fine-tune on the public
    # data with CE (the ablation run: the public data FedMKT distils on, without the knowledge)
    client_public_ce: bool = False
    zero_shot: bool = True  # evaluate every participant before round 1 (round 0)
    task: TaskConfig
    participants: list[ParticipantSpec] = Field(min_length=2)
    knowledge: KnowledgeConfig = KnowledgeConfig()
    alignment: AlignmentConfig = AlignmentConfig()
    selection: SelectionConfig = SelectionConfig()
    deadlines: DeadlinesConfig = DeadlinesConfig()
    quorum: QuorumConfig = QuorumConfig()
    max_parallel: int | None = Field(None, ge=1)  # clients working at once; None = all
    tls: TlsConfig | None = None
    aligner: AlignerEndpoint = AlignerEndpoint()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_name(value)

    @model_validator(mode="after")
    def _consistent(self) -> FederationConfig:
        names = [p.name for p in self.participants]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"participants: names must be unique, repeated: {duplicates}")
        servers = [p.name for p in self.participants if p.role == "server"]
        if len(servers) != 1:
            raise ValueError(f"participants: exactly one has role 'server', found {servers}")
        clients = self.clients
        if self.quorum.min_clients > len(clients):
            raise ValueError(
                f"quorum.min_clients: {self.quorum.min_clients} is more than the "
                f"{len(clients)} clients configured"
            )
        if self.scenario == Scenario.ONE_TO_ONE and len(clients) != 1:
            raise ValueError(f"scenario: one_to_one needs exactly one client, found {len(clients)}")
        if self.scenario == Scenario.HOMOGENEOUS:
            models = {(c.model, c.tokenizer) for c in clients}
            if len(models) != 1:
                raise ValueError(
                    "scenario: homogeneous needs every client on the same model and tokenizer, "
                    f"found {sorted(str(m) for m in models)}"
                )
        if self.client_public_ce and self.transfer:
            raise ValueError("client_public_ce: only a baseline run (transfer: false) replaces "
                             "the clients' distillation by CE on the public data")
        if self.fedavg and self.scenario != Scenario.HOMOGENEOUS:
            raise ValueError("fedavg: only the homogeneous scenario can average LoRA weights")
        if self.task.parts is not None and self.task.parts < len(clients) + 1:
            raise ValueError(
                f"task.parts: {len(clients)} clients need at least {len(clients) + 1} parts "
                f"(1 public + 1 per client), got {self.task.parts}"
            )
        return self

    # -- convenience ---------------------------------------------------------------------
    @property
    def server(self) -> ParticipantSpec:
        return next(p for p in self.participants if p.role == "server")

    @property
    def clients(self) -> list[ParticipantSpec]:
        return [p for p in self.participants if p.role == "client"]

    def participant(self, name: str) -> ParticipantSpec:
        for p in self.participants:
            if p.name == name:
                return p
        raise KeyError(name)

    def client_index(self, name: str) -> int:
        return [c.name for c in self.clients].index(name)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=False), sort_keys=False)


def _check_name(value: str) -> str:
    if not NAME_PATTERN.match(value):
        raise ValueError(
            "must be 1-63 characters of letters, digits, '_', '.', '-' and start with a letter "
            f"or digit, got {value!r}"
        )
    return value


def _check_endpoint(value: str | None) -> str | None:
    if value is None:
        return None
    match = ENDPOINT_PATTERN.match(value)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise ValueError(f"must be host:port (port 1-65535), got {value!r}")
    return value


# --------------------------------------------------------------------------- loading


def _location(loc: tuple[Any, ...]) -> str:
    """Pydantic's error location as a path a person reads: ``participants[1].lora.r``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(config)"


def describe_validation_error(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = _location(tuple(error["loc"]))
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field (check its spelling)"
        problems.append(f"{where}: {message}")
    return "; ".join(problems)


def parse_federation_config(
    text: str | dict[str, Any], *, base_dir: Path | None = None, source: str = "config"
) -> FederationConfig:
    """Validate a federation config given as YAML text or an already parsed mapping.

    Relative TLS paths are resolved against ``base_dir`` (the config file's folder) and must
    exist. Raises ``FederationConfigError`` naming every bad field.
    """
    if isinstance(text, str):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise FederationConfigError(f"{source}: not valid YAML: {exc}") from None
    else:
        data = text
    if not isinstance(data, dict):
        raise FederationConfigError(f"{source}: must be a YAML mapping of settings")
    try:
        config = FederationConfig.model_validate(data)
    except ValidationError as exc:
        raise FederationConfigError(f"{source}: {describe_validation_error(exc)}") from None
    if config.tls is not None:
        config = _resolve_tls(config, base_dir, source)
    return config


def _resolve_tls(config: FederationConfig, base_dir: Path | None, source: str) -> FederationConfig:
    tls = config.tls
    assert tls is not None
    resolved: dict[str, Any] = {}
    for field in ("ca", "cert", "key"):
        value = getattr(tls, field)
        if value is None:
            continue
        path = value if value.is_absolute() or base_dir is None else base_dir / value
        if not path.is_file():
            raise FederationConfigError(f"{source}: tls.{field}: file {str(path)!r} does not exist")
        resolved[field] = path.resolve()
    return config.model_copy(update={"tls": tls.model_copy(update=resolved)})


def load_federation_config(path: str | Path) -> FederationConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FederationConfigError(f"cannot read federation config {path}: {exc}") from None
    return parse_federation_config(text, base_dir=path.parent, source=str(path))
