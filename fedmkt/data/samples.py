"""One training/evaluation example (`Sample`) and its JSONL file format.

A sample is a prompt and the answer that follows it. The text a model sees is
``full_text(sample) = prompt + answer`` (this is also the public text the aligner aligns); the
answer is the part a model is trained and scored on. Multiple-choice samples also carry the
candidate continuations (``choices``) and the index of the right one (``label``); the answer is
then ``choices[label]``. Answers and choices carry their own leading space (``" True"``), as
lm-evaluation-harness continuations do, so that ``prompt + answer`` is the exact text.

JSONL: one JSON object per line with the fields ``id`` (optional: defaults to
``"<file stem>-<line index>"``), ``prompt``, ``answer``, ``choices`` (optional list) and
``label`` (optional; with ``choices`` it may replace ``answer``). Unknown fields are refused, so a
misspelt field is reported rather than silently ignored. Every problem names the line and field.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError


class SampleError(ValueError):
    """A sample, or a file of samples, is not valid; the message says where and why."""


@dataclass(frozen=True)
class Sample:
    """A prompt, its answer and, for multiple choice, the choices and the right one's index.

    ``label`` is -1 when there are no choices. When choices are given and ``label`` is -1, it is
    set to the index of the first choice equal to ``answer``.
    """

    id: str
    prompt: str
    answer: str
    choices: tuple[str, ...] = ()
    label: int = -1

    def __post_init__(self) -> None:
        for name in ("id", "prompt", "answer"):
            if not isinstance(getattr(self, name), str):
                raise SampleError(f"sample {self.id!r}: field {name!r} must be a string")
        if not self.id:
            raise SampleError("sample id must not be empty")
        if not isinstance(self.label, int) or isinstance(self.label, bool):
            raise SampleError(f"sample {self.id!r}: field 'label' must be an integer")
        if not self.answer:
            raise SampleError(f"sample {self.id!r}: field 'answer' must not be empty")
        choices = tuple(self.choices)
        if not all(isinstance(c, str) and c for c in choices):
            raise SampleError(f"sample {self.id!r}: field 'choices' must hold non-empty strings")
        object.__setattr__(self, "choices", choices)
        if not choices:
            if self.label != -1:
                raise SampleError(f"sample {self.id!r}: field 'label' needs 'choices'")
            return
        if self.label == -1:
            if self.answer not in choices:
                raise SampleError(
                    f"sample {self.id!r}: field 'answer' {self.answer!r} is not one of the choices"
                )
            object.__setattr__(self, "label", choices.index(self.answer))
        elif not 0 <= self.label < len(choices):
            raise SampleError(
                f"sample {self.id!r}: field 'label' {self.label} is outside 0..{len(choices) - 1}"
            )
        elif choices[self.label] != self.answer:
            raise SampleError(
                f"sample {self.id!r}: field 'answer' {self.answer!r} differs from "
                f"choices[{self.label}] {choices[self.label]!r}"
            )

    @property
    def is_multiple_choice(self) -> bool:
        return bool(self.choices)

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"id": self.id, "prompt": self.prompt, "answer": self.answer}
        if self.choices:
            out["choices"] = list(self.choices)
            out["label"] = self.label
        return out


def full_text(sample: Sample, answer: str | None = None) -> str:
    """The text a model reads: the prompt followed by the answer (or by ``answer``)."""
    return sample.prompt + (sample.answer if answer is None else answer)


def answer_span(sample: Sample, answer: str | None = None) -> tuple[int, int]:
    """Character span ``[start, end)`` of the answer inside ``full_text(sample, answer)``."""
    text = sample.answer if answer is None else answer
    return len(sample.prompt), len(sample.prompt) + len(text)


def check_unique_ids(samples: Iterable[Sample]) -> None:
    """Raise `SampleError` naming the first id that occurs twice."""
    seen: set[str] = set()
    for sample in samples:
        if sample.id in seen:
            raise SampleError(f"sample id {sample.id!r} occurs more than once; ids must be unique")
        seen.add(sample.id)


class _Record(BaseModel):
    """One JSONL line as written by a person: types are checked strictly, extras refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str | None = None
    prompt: str
    answer: str | None = None
    choices: list[str] = []
    label: int | None = None


def _record_to_sample(record: _Record, default_id: str) -> Sample:
    answer = record.answer
    label = -1 if record.label is None else record.label
    if answer is None:
        if not record.choices or record.label is None:
            raise SampleError("field 'answer': required unless 'choices' and 'label' are given")
        if not 0 <= label < len(record.choices):
            raise SampleError(
                f"field 'label': {label} is outside 0..{len(record.choices) - 1}"
            )
        answer = record.choices[label]
    return Sample(
        id=record.id if record.id is not None else default_id,
        prompt=record.prompt,
        answer=answer,
        choices=tuple(record.choices),
        label=label,
    )


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "record"
    return f"field {field!r}: {first['msg']}"


def parse_jsonl_line(line: str, default_id: str) -> Sample:
    """One JSONL line as a `Sample`; raises `SampleError` naming the field at fault."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise SampleError(f"not valid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(obj, dict):
        raise SampleError(f"expected a JSON object, got {type(obj).__name__}")
    try:
        record = _Record.model_validate(obj)
    except ValidationError as exc:
        raise SampleError(_describe(exc)) from exc
    return _record_to_sample(record, default_id)


def read_jsonl(path: str | os.PathLike[str]) -> list[Sample]:
    """Read samples from a JSONL file (blank lines skipped); ids must be unique.

    Raises `SampleError` with ``<path>:<line>: field '<name>': <problem>``.
    """
    path = Path(path)
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                sample = parse_jsonl_line(line, default_id=f"{path.stem}-{len(samples)}")
            except SampleError as exc:
                raise SampleError(f"{path}:{lineno}: {exc}") from exc
            if sample.id in seen:
                raise SampleError(
                    f"{path}:{lineno}: field 'id': {sample.id!r} already used on line "
                    f"{seen[sample.id]}; ids must be unique"
                )
            seen[sample.id] = lineno
            samples.append(sample)
    return samples


def write_jsonl(samples: Sequence[Sample], path: str | os.PathLike[str]) -> None:
    """Write samples as JSONL, atomically (a temporary file renamed over ``path``)."""
    check_unique_ids(samples)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for sample in samples:
                handle.write(json.dumps(sample.to_dict(), ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
