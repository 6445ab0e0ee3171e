"""Tokenizers known to an aligner, registered by content and identified by fingerprint.

A registration hands over the files of a Hugging Face tokenizer folder. They are checked (names,
sizes, loadable), fingerprinted (sha256 of the canonical vocabulary), and stored under
``<root>/<fingerprint>/`` (written to a temporary folder, then renamed), so that a restarted
aligner still knows every tokenizer registered before. Loaded tokenizers stay in a small LRU.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path

from fedmkt.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted

log = logging.getLogger(__name__)

# Files a Hugging Face tokenizer folder may hold. Nothing executable: `auto_map` code is never
# trusted (trust_remote_code stays False) and SentencePiece models are protobuf, not pickle.
ALLOWED_FILES = frozenset({
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model",
    "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json",
})
MAX_FILE_BYTES = 64 << 20
MAX_TOTAL_BYTES = 96 << 20
FINGERPRINT_RE = re.compile(r"^[0-9a-f]{64}$")
INFO_FILE = "fedmkt-tokenizer.json"


@dataclass(frozen=True)
class TokenizerInfo:
    fingerprint: str
    vocab_size: int
    name: str
    special_token_ids: tuple[int, ...] = ()
    word_boundary_marker: str = ""


@dataclass
class _Entry:
    info: TokenizerInfo
    tokenizer: object
    extras: dict = field(default_factory=dict)  # per-tokenizer caches (canonical vocabularies)


def check_fingerprint(fingerprint: str) -> str:
    if not isinstance(fingerprint, str) or not FINGERPRINT_RE.match(fingerprint):
        raise InvalidArgument(
            f"tokenizer fingerprint must be 64 lowercase hex characters, got {fingerprint!r}"
        )
    return fingerprint


def describe(tokenizer, name: str) -> TokenizerInfo:
    from fedmkt.align.canonical import word_boundary_marker
    from fedmkt.align.fingerprint import tokenizer_fingerprint

    return TokenizerInfo(
        fingerprint=tokenizer_fingerprint(tokenizer),
        vocab_size=len(tokenizer),
        name=name,
        special_token_ids=tuple(sorted(set(tokenizer.all_special_ids))),
        word_boundary_marker=word_boundary_marker(tokenizer),
    )


class TokenizerRegistry:
    """Registered tokenizers on disk under ``root``, the recently used ones in memory.

    ``max_uploaded`` caps the tokenizers registered from uploaded files (each costs disk for
    good and memory while loaded); builtins do not count. None = no cap.
    """

    def __init__(self, root: Path, max_loaded: int = 8, max_uploaded: int | None = None,
                 cap_setting: str = "max_tokenizers") -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_loaded = max_loaded
        self.max_uploaded = max_uploaded
        self.cap_setting = cap_setting
        self._loaded: OrderedDict[str, _Entry] = OrderedDict()
        self._builtins: dict[str, str] = {}  # builtin name -> fingerprint
        self._lock = threading.RLock()

    # -- registration -------------------------------------------------------------------
    def register_files(self, files: dict[str, bytes], name: str = "") -> TokenizerInfo:
        """Register a tokenizer from the files of its folder; idempotent by content."""
        self._check_files(files)
        tmp = Path(tempfile.mkdtemp(prefix=".upload-", dir=self.root))
        try:
            for fname, content in files.items():
                (tmp / fname).write_bytes(content)
            tokenizer = self._load_folder(tmp, what="the uploaded files")
            info = describe(tokenizer, name or "unnamed")
            with self._lock:  # one check-and-store at a time, so that the cap holds
                stored = self._stored_meta(info.fingerprint)
                if stored is not None:  # known content: idempotent, under its first label
                    self._check_label(info.fingerprint, stored, name)
                    info = replace(info, name=stored.get("name", ""))
                else:
                    self._check_cap()
                    self._store(tmp, info, uploaded=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self._remember(info, tokenizer)

    def _stored_meta(self, fingerprint: str) -> dict | None:
        meta_file = self.root / fingerprint / INFO_FILE
        return json.loads(meta_file.read_text()) if meta_file.exists() else None

    @staticmethod
    def _check_label(fingerprint: str, stored: dict, name: str) -> None:
        """Registering known files again is idempotent, but not under another label: that
        label would not be kept, and silently answering with the old one misleads."""
        label = stored.get("name", "")
        if name and name != label:
            raise FailedPrecondition(
                f"these files are tokenizer {fingerprint[:12]}…, already registered as "
                f"{label!r}; a tokenizer keeps its first label: register it as {label!r} or "
                "with no name (its fingerprint is its identity)"
            )

    def _check_cap(self) -> None:
        if self.max_uploaded is None:
            return
        uploaded = sum(1 for folder in self.root.iterdir()
                       if not folder.name.startswith(".") and (folder / INFO_FILE).exists()
                       and not json.loads((folder / INFO_FILE).read_text()).get("builtin"))
        if uploaded >= self.max_uploaded:
            raise ResourceExhausted(
                f"this aligner already holds {uploaded} uploaded tokenizers, its limit "
                f"(setting {self.cap_setting}); use one that is registered (ListTokenizers / "
                "GET /v1/tokenizers) or a builtin, or ask its operator to raise the limit"
            )

    def register_builtin(self, builtin: str) -> TokenizerInfo:
        """Register one of fedmkt's builtin tokenizers by name."""
        from fedmkt.models.tokenizers import BUILTIN_TOKENIZERS, load_tokenizer, tokenizer_path

        with self._lock:
            if builtin in self._builtins:
                return self.get(self._builtins[builtin]).info
        if builtin not in BUILTIN_TOKENIZERS:
            raise NotFound(
                f"unknown builtin tokenizer {builtin!r}; builtins: {', '.join(BUILTIN_TOKENIZERS)}"
            )
        tokenizer = load_tokenizer(builtin)
        info = describe(tokenizer, builtin)
        self._store(tokenizer_path(builtin), info, uploaded=False)
        with self._lock:
            self._builtins[builtin] = info.fingerprint
        return self._remember(info, tokenizer)

    # -- lookup -------------------------------------------------------------------------
    def resolve(self, fingerprint: str = "", builtin: str = "") -> _Entry:
        """The entry named by a fingerprint or a builtin name (registering builtins lazily)."""
        if builtin:
            return self.get(self.register_builtin(builtin).fingerprint)
        if not fingerprint:
            raise InvalidArgument("name a tokenizer by fingerprint or builtin name")
        return self.get(fingerprint)

    def get(self, fingerprint: str) -> _Entry:
        check_fingerprint(fingerprint)
        with self._lock:
            entry = self._loaded.get(fingerprint)
            if entry is not None:
                self._loaded.move_to_end(fingerprint)
                return entry
        folder = self.root / fingerprint
        if not (folder / INFO_FILE).exists():
            raise NotFound(
                f"no tokenizer with fingerprint {fingerprint[:12]}… is registered; register its "
                "files (RegisterTokenizer / POST /v1/tokenizers) first"
            )
        meta = json.loads((folder / INFO_FILE).read_text())
        tokenizer = self._load_folder(folder, what=f"stored tokenizer {fingerprint[:12]}")
        info = TokenizerInfo(
            fingerprint=fingerprint,
            vocab_size=len(tokenizer),
            name=meta.get("name", ""),
            special_token_ids=tuple(meta.get("special_token_ids", ())),
            word_boundary_marker=meta.get("word_boundary_marker", ""),
        )
        return self._remember_entry(_Entry(info, tokenizer))

    def list(self) -> list[TokenizerInfo]:
        infos = []
        for folder in sorted(self.root.iterdir()):
            meta_file = folder / INFO_FILE
            if folder.name.startswith(".") or not meta_file.exists():
                continue
            meta = json.loads(meta_file.read_text())
            infos.append(TokenizerInfo(
                fingerprint=folder.name, vocab_size=meta["vocab_size"], name=meta.get("name", ""),
                special_token_ids=tuple(meta.get("special_token_ids", ())),
                word_boundary_marker=meta.get("word_boundary_marker", ""),
            ))
        return infos

    # -- internals ----------------------------------------------------------------------
    @staticmethod
    def _check_files(files: dict[str, bytes]) -> None:
        if not files:
            raise InvalidArgument("no tokenizer files given")
        total = 0
        for fname, content in files.items():
            if fname not in ALLOWED_FILES:
                raise InvalidArgument(
                    f"file {fname!r} is not a tokenizer file; allowed: "
                    f"{', '.join(sorted(ALLOWED_FILES))}"
                )
            if len(content) > MAX_FILE_BYTES:
                raise ResourceExhausted(
                    f"file {fname} is {len(content)} bytes; the limit is {MAX_FILE_BYTES}"
                )
            total += len(content)
        if total > MAX_TOTAL_BYTES:
            raise ResourceExhausted(f"tokenizer files total {total} bytes; the limit is "
                                    f"{MAX_TOTAL_BYTES}")
        if not {"tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model",
                "sentencepiece.bpe.model"} & set(files):
            raise InvalidArgument(
                "no vocabulary among the files: send tokenizer.json (or vocab.json + merges.txt, "
                "or tokenizer.model) with tokenizer_config.json"
            )

    @staticmethod
    def _load_folder(folder: Path, what: str):
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        except Exception as exc:  # noqa: BLE001 - any loader failure is the caller's bad input
            raise InvalidArgument(f"{what} do not load as a Hugging Face tokenizer: {exc}") from exc
        if len(tokenizer) == 0:
            raise InvalidArgument(f"{what} load as a tokenizer with an empty vocabulary")
        return tokenizer

    def _store(self, source: Path, info: TokenizerInfo, uploaded: bool) -> None:
        final = self.root / info.fingerprint
        if (final / INFO_FILE).exists():
            return
        staging = Path(tempfile.mkdtemp(prefix=".store-", dir=self.root))
        try:
            for item in source.iterdir():
                if item.is_file() and item.name in ALLOWED_FILES:
                    shutil.copyfile(item, staging / item.name)
            meta = {
                "name": info.name, "vocab_size": info.vocab_size,
                "special_token_ids": list(info.special_token_ids),
                "word_boundary_marker": info.word_boundary_marker,
            }
            if not uploaded:
                meta["builtin"] = info.name  # not counted against max_uploaded
            (staging / INFO_FILE).write_text(json.dumps(meta, ensure_ascii=False))
            try:
                os.replace(staging, final)
            except OSError:
                if not (final / INFO_FILE).exists():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _remember(self, info: TokenizerInfo, tokenizer) -> TokenizerInfo:
        return self._remember_entry(_Entry(info, tokenizer)).info

    def _remember_entry(self, entry: _Entry) -> _Entry:
        with self._lock:
            existing = self._loaded.get(entry.info.fingerprint)
            if existing is not None:
                self._loaded.move_to_end(entry.info.fingerprint)
                return existing
            self._loaded[entry.info.fingerprint] = entry
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)
            return entry
