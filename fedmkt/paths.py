"""Where fedmkt keeps what it builds: builtin tokenizers and models, vocab maps, run state."""

from __future__ import annotations

import os
from pathlib import Path


def cache_home() -> Path:
    """The root cache folder: ``$FEDMKT_HOME`` or ``~/.cache/fedmkt``."""
    root = os.environ.get("FEDMKT_HOME")
    path = Path(root) if root else Path.home() / ".cache" / "fedmkt"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir(*parts: str) -> Path:
    path = cache_home().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
