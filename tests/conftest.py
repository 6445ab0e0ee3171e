"""Shared test set-up: one cache folder for builtin tokenizers/models across runs."""

from __future__ import annotations

import os
from pathlib import Path

# Builtin tokenizers and tiny models are assembled once into this folder (ignored by git) and
# reused by later runs; set FEDMKT_HOME to use another one.
os.environ.setdefault("FEDMKT_HOME", str(Path(__file__).resolve().parent.parent / ".fedmkt-cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
