"""A finished run's final adapters, fetched from the participants into the run folder.

``runs/<run-id>/adapters/<participant>/`` is each participant's latest adapter of the run as a
PEFT folder (``adapter_config.json`` + ``adapter_model.safetensors`` + ``fedmkt_adapter.json``
naming the base model), which ``peft.PeftModel.from_pretrained(base, folder)`` opens and
``fedmkt export --adapter`` merges. The embedded run (``fedmkt run``) and the containers' run job
(``fedmkt submit --report-dir``) both write it with this function, over gRPC.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedmkt.config import TlsConfig
from fedmkt.federation.interfaces import CallOptions, CancelScope
from fedmkt.models.adapters import ADAPTER_FILE, write_peft_folder

FETCH_SECONDS = 300


def fetch_final_adapters(endpoints: dict[str, str], tls: TlsConfig | None, run_id: str,
                         run_dir: Path) -> dict[str, dict[str, Any]]:
    """participant → ``{round, digest, folder, path}`` (``path``: the safetensors file, both
    relative to ``run_dir``), or ``{error}`` when its adapter could not be fetched or written."""
    from services.controller.clients import GrpcParticipant, open_channel

    out: dict[str, dict[str, Any]] = {}
    for name, endpoint in endpoints.items():
        try:
            with open_channel(endpoint, tls) as channel:
                blob = GrpcParticipant(name, channel).fetch_adapter(
                    -1, CallOptions.within(name, FETCH_SECONDS, CancelScope()), run_id)
            if not blob.peft_config:
                raise ValueError("the participant sent no adapter_config.json with its adapter")
            folder = write_peft_folder(run_dir / "adapters" / name, blob.data, blob.peft_config,
                                       blob.base_model)
        except Exception as exc:  # noqa: BLE001 - a missing adapter is reported, not fatal
            out[name] = {"error": str(exc)}
            continue
        out[name] = {"round": blob.round, "digest": blob.digest,
                     "folder": str(folder.relative_to(run_dir)),
                     "path": str((folder / ADAPTER_FILE).relative_to(run_dir)),
                     "base_model": blob.base_model}
    return out
