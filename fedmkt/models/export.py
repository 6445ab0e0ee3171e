"""``fedmkt export``: merge a participant's LoRA adapter into a full Hugging Face checkpoint.

The input is a PEFT folder as every participant keeps per round (``fedmkt.models.adapters``:
``adapter_config.json`` + ``adapter_model.safetensors``), named directly or found in a run
folder of ``fedmkt run`` (``find_run_adapter``). The base model is loaded with fedmkt's own
loader (a builtin name, a checkpoint folder or a hub id), the adapter applied with
``peft.PeftModel.from_pretrained``, checked against the model's LoRA parameters, merged
(``merge_and_unload``), and the result written as an ordinary checkpoint folder: ``config.json``,
``generation_config.json``, ``model.safetensors`` (safetensors only, never pickle), the
tokenizer files, and ``fedmkt_export.json`` saying where it came from. That folder is what
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``, vLLM or
lm-evaluation-harness (``--model hf --model_args pretrained=<folder>``) load, offline.

The output is built under a temporary name and renamed into place (``fedmkt.models.atomic``):
a crash never leaves a half checkpoint under the final name. An existing output folder is kept
unless ``force`` is given.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmkt.errors import FailedPrecondition, InvalidArgument, NotFound
from fedmkt.models.adapters import (
    ADAPTER_FILE,
    CONFIG_FILE,
    INFO_FILE,
    AdapterMismatch,
    list_adapters,
    round_dir,
    state_dict_from_bytes,
    validate_adapter_state,
)
from fedmkt.models.atomic import atomic_folder, is_temporary, remove_temporaries

log = logging.getLogger(__name__)

EXPORT_INFO_FILE = "fedmkt_export.json"
EXPORT_DTYPES = ("float32", "bfloat16", "float16")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class ExportError(InvalidArgument):
    """The export cannot be done as asked; the message says why and what to do."""


@dataclass(frozen=True)
class RunAdapter:
    """A participant's adapter found in a run folder."""

    folder: Path  # the PEFT folder
    round: int
    run_id: str
    participant: str
    model: str | None  # the model spec the participant was configured with, if known


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    base_model: str
    adapter_dir: Path
    dtype: str
    seconds: float


# --------------------------------------------------------------------------- the adapter


def read_adapter_config(folder: str | Path) -> dict[str, Any]:
    """``adapter_config.json`` of a whole PEFT LoRA folder; clear errors for anything else."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise NotFound(f"no adapter folder at {folder}")
    if not folder.is_dir():
        raise ExportError(f"{folder} is a file; give the PEFT folder that holds {CONFIG_FILE} "
                          f"and {ADAPTER_FILE}")
    if is_temporary(folder):
        raise ExportError(f"{folder} is a temporary folder left by an unfinished write; give a "
                          "round folder such as .../adapters/round-0003")
    missing = [name for name in (CONFIG_FILE, ADAPTER_FILE) if not (folder / name).is_file()]
    if missing:
        found = list_adapters(folder.parent if folder.name == "adapters" else folder)
        hint = (f"; it holds the adapters of rounds {', '.join(str(r) for r, _ in found)}: give "
                f"one round folder, such as {found[-1][1]}" if found else "")
        raise NotFound(f"{folder} is not a whole PEFT adapter folder: {' and '.join(missing)} "
                       f"missing{hint}")
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{folder / CONFIG_FILE} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ExportError(f"{folder / CONFIG_FILE} does not hold a JSON object")
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise ExportError(f"{folder} holds a {peft_type or 'typeless'} PEFT adapter; only LoRA "
                          "adapters are merged")
    return config


def adapter_base_model(folder: str | Path, config: dict[str, Any] | None = None) -> str | None:
    """The base model an adapter folder names: the builtin name or folder recorded by fedmkt
    (``fedmkt_adapter.json``), else PEFT's ``base_model_name_or_path`` when that is a folder
    here or a hub id. None when neither names a model this machine can load."""
    from fedmkt.models.registry import BUILTIN_MODELS

    folder = Path(folder).expanduser()
    config = config if config is not None else read_adapter_config(folder)
    candidates = []
    try:
        info = json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
        if isinstance(info, dict):
            candidates.append(info.get("base_model"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        pass
    candidates.append(config.get("base_model_name_or_path"))
    for candidate in candidates:
        if not isinstance(candidate, str) or not candidate:
            continue
        if candidate in BUILTIN_MODELS or Path(candidate).expanduser().is_dir():
            return candidate
        looks_like_path = candidate.startswith(("/", ".", "~")) or candidate.count("/") > 1
        if not looks_like_path:
            return candidate  # a hub id
    return None


def find_run_adapter(run: str | Path, participant: str, *, round_index: int | None = None,
                     runs_dir: str | Path = "runs", baseline: bool = False) -> RunAdapter:
    """The PEFT folder of ``participant``'s adapter in a ``fedmkt run`` run folder.

    ``run`` is a run id under ``runs_dir`` or a run folder. The participants' state lives in
    ``<run>/fedmkt/state/<participant>/runs/<run id>/adapters/round-NNNN/`` (the baseline's in
    ``<run>/baseline/state/<participant>/runs/<run id>-baseline/...``); ``round_index`` None
    means the newest whole round, which after a finished run is the final adapter."""
    run_dir = Path(runs_dir).expanduser() / str(run)
    if not run_dir.is_dir():
        run_dir = Path(run).expanduser()
    if not run_dir.is_dir():
        raise NotFound(f"no run {str(run)!r}: neither a run folder nor a run id under "
                       f"{runs_dir} (see `fedmkt runs --runs-dir {runs_dir}`)")
    run_id = _run_id(run_dir)
    kind = "baseline" if baseline else "fedmkt"
    inner_id = f"{run_id}-baseline" if baseline else run_id
    states = run_dir / kind / "state"
    if not states.is_dir():
        what = "the baseline (was it run with --no-baselines?)" if baseline else "participants"
        raise NotFound(
            f"{run_dir} holds no state of {what} ({states} missing). Runs started with "
            "`fedmkt submit` keep the adapters in each participant's own state folder "
            "(<state_dir>/runs/<run id>/adapters/round-NNNN): export that folder with --adapter")
    names = sorted(p.name for p in states.iterdir() if p.is_dir())
    if participant not in names:
        raise NotFound(f"run {run_id} has no participant {participant!r}; participants: "
                       f"{', '.join(names) or '(none)'}")
    run_root = states / participant / "runs" / inner_id
    found = list_adapters(run_root)
    if not found:
        raise NotFound(f"participant {participant!r} of run {run_id} has no saved adapter yet "
                       f"(nothing whole under {run_root / 'adapters'})")
    if round_index is None:
        chosen, folder = found[-1]
    else:
        rounds = dict(found)
        if round_index not in rounds:
            raise NotFound(f"participant {participant!r} of run {run_id} has no adapter of round "
                           f"{round_index}; rounds: {', '.join(str(r) for r, _ in found)}")
        chosen, folder = round_index, round_dir(run_root, round_index)
    return RunAdapter(folder, chosen, run_id, participant,
                      _configured_model(run_dir / kind, participant))


def _run_id(run_dir: Path) -> str:
    try:
        status = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        if isinstance(status, dict) and isinstance(status.get("run_id"), str):
            return status["run_id"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        pass
    return run_dir.name


def _configured_model(kind_dir: Path, participant: str) -> str | None:
    """The ``model`` of the participant config the embedded run wrote, if readable."""
    import yaml

    try:
        values = yaml.safe_load((kind_dir / "participants" / f"{participant}.yaml").read_text(
            encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    model = values.get("model") if isinstance(values, dict) else None
    return model if isinstance(model, str) and model else None


# --------------------------------------------------------------------------- the export


def check_output(out_dir: str | Path, *, force: bool = False,
                 protected: tuple[Path, ...] = ()) -> Path:
    """``out_dir`` as a path the export may (re)place; errors before any model is loaded."""
    out = Path(out_dir).expanduser()
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise FailedPrecondition(f"output {out} exists and is not a folder; remove it or "
                                     "choose another output folder")
        if not force:
            raise FailedPrecondition(f"output folder {out} exists already; pass --force to "
                                     "replace it, or choose another output folder")
    resolved = out.resolve()
    for path in protected:
        path = path.resolve()
        if resolved == path or resolved in path.parents:
            raise ExportError(f"output folder {out} holds the export's own input {path}; "
                              "choose another output folder")
    return out


def export_merged(adapter_dir: str | Path, out_dir: str | Path, *, model: str | None = None,
                  dtype: str = "float32", force: bool = False,
                  provenance: dict[str, Any] | None = None) -> ExportResult:
    """Merge the LoRA adapter in ``adapter_dir`` into its base model and write a full
    checkpoint folder at ``out_dir``.

    ``model`` is the base model (builtin name, checkpoint folder or hub id); None means the
    one the adapter folder names (``adapter_base_model``). The base is loaded on CPU in
    ``dtype`` (float32, bfloat16 or float16), which is also the dtype of the saved weights.
    """
    from fedmkt.models.gguf_files import GgufPackageMissing
    from fedmkt.models.loading import load_model, resolve_model
    from fedmkt.models.registry import ModelNotFoundError

    started = time.monotonic()
    adapter_dir = Path(adapter_dir).expanduser()
    config = read_adapter_config(adapter_dir)
    if dtype not in EXPORT_DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}; use {', '.join(EXPORT_DTYPES)}")
    recorded = adapter_base_model(adapter_dir, config)
    spec = model or recorded
    if not spec:
        raise ExportError(
            f"the adapter in {adapter_dir} names no base model found here (base_model_name_or_"
            f"path {config.get('base_model_name_or_path')!r}); give it with --model")
    if model and recorded and recorded != model:
        log.warning("adapter %s was trained on %s; exporting it onto %s as asked", adapter_dir,
                    recorded, model)
    try:
        base_path = resolve_model(spec)
    except (ModelNotFoundError, GgufPackageMissing) as exc:
        raise ExportError(str(exc)) from None
    protected = (adapter_dir,) + ((Path(base_path),) if Path(base_path).is_dir() else ())
    out = check_output(out_dir, force=force, protected=protected)
    data = (adapter_dir / ADAPTER_FILE).read_bytes()
    state = state_dict_from_bytes(data)  # a malformed file fails before the model is loaded

    try:
        base, tokenizer = load_model(spec, dtype=dtype, device="cpu")
    except (ModelNotFoundError, GgufPackageMissing) as exc:
        raise ExportError(str(exc)) from None
    merged = _merge(base, adapter_dir, state, spec)
    digest = hashlib.sha256(data).hexdigest()
    info = {
        "format": 1,
        "base_model": spec,
        "adapter": str(adapter_dir.resolve()),
        "adapter_sha256": digest,
        "lora": {k: config.get(k) for k in ("r", "lora_alpha", "target_modules", "use_rslora")},
        "dtype": dtype,
        **(provenance or {}),
    }
    remove_temporaries(out.parent, out.name)  # left by an export that crashed
    with atomic_folder(out, replace=force) as tmp:
        merged.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        _check_written(tmp)
        _readable(tmp)
    seconds = time.monotonic() - started
    log.info("exported %s merged into %s to %s (%s) in %.1f s", adapter_dir, spec, out, dtype,
             seconds)
    return ExportResult(out, spec, adapter_dir, dtype, seconds)


def export_run_adapter(run: str | Path, participant: str, out_dir: str | Path, *,
                       round_index: int | None = None, runs_dir: str | Path = "runs",
                       baseline: bool = False, model: str | None = None,
                       dtype: str = "float32", force: bool = False) -> ExportResult:
    """``export_merged`` of the adapter ``find_run_adapter`` finds. The base model is
    ``model``, else the one the adapter folder records, else the participant's configured one."""
    found = find_run_adapter(run, participant, round_index=round_index, runs_dir=runs_dir,
                             baseline=baseline)
    if model is None and adapter_base_model(found.folder) is None:
        model = found.model
    provenance = {"run": found.run_id, "participant": participant,
                  "round": found.round, "baseline": baseline}
    return export_merged(found.folder, out_dir, model=model, dtype=dtype, force=force,
                         provenance=provenance)


def _merge(base: Any, adapter_dir: Path, state: dict[str, Any], spec: str) -> Any:
    """``PeftModel.from_pretrained(base, adapter_dir)``, checked tensor by tensor, merged."""
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    except (ValueError, RuntimeError, KeyError) as exc:  # unknown modules, size mismatch
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise AdapterMismatch(
            f"the adapter in {adapter_dir} does not fit model {spec!r}: "
            f"{' '.join(lines[:2])[:400]} (was it trained on another base model? give the right "
            "one with --model)") from None
    for config in peft_model.peft_config.values():  # the base it is on now, not the recorded
        config.base_model_name_or_path = getattr(base, "name_or_path", None) or None
    try:
        validate_adapter_state(peft_model, state)
    except AdapterMismatch as exc:
        raise AdapterMismatch(f"the adapter in {adapter_dir} does not fit model {spec!r}: "
                              f"{exc} (give the right base model with --model)") from None
    merged = peft_model.merge_and_unload()
    merged.eval()
    return merged


def _readable(folder: Path) -> None:
    """Give the files the modes the umask allows: safetensors writes its files 0600, which a
    server running as another user could not read. (The participant's own state keeps 0600.)"""
    mask = os.umask(0)
    os.umask(mask)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~mask)


def _check_written(folder: Path) -> None:
    names = {p.name for p in folder.iterdir()}
    if "config.json" not in names or not any(n.endswith(".safetensors") for n in names):
        raise RuntimeError(f"transformers did not write config.json and safetensors weights "
                           f"into {folder}")
    pickled = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    if pickled:
        raise RuntimeError(f"export wrote pickle files {pickled}; refusing to publish them")
    if not any(n in names for n in ("tokenizer.json", "tokenizer_config.json")):
        raise RuntimeError(f"the tokenizer files were not written into {folder}")
