"""Sample validation and the JSONL file format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedmkt.data.samples import (
    Sample,
    SampleError,
    answer_span,
    full_text,
    read_jsonl,
    write_jsonl,
)
from fedmkt.data.tasks import load_task


def _write_lines(path: Path, lines: list[object]) -> Path:
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines),
        encoding="utf-8",
    )
    return path


def test_label_is_inferred_from_the_answer() -> None:
    sample = Sample("a", "Q?", " no", choices=[" yes", " no"])  # type: ignore[arg-type]
    assert sample.label == 1
    assert sample.choices == (" yes", " no")
    assert sample.is_multiple_choice


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"answer": " maybe", "choices": (" yes", " no")}, "not one of the choices"),
        ({"answer": " yes", "choices": (" yes", " no"), "label": 1}, "differs from"),
        ({"answer": " yes", "choices": (" yes", " no"), "label": 2}, "outside 0..1"),
        ({"answer": " yes", "label": 0}, "needs 'choices'"),
        ({"answer": ""}, "'answer' must not be empty"),
        ({"answer": " yes", "choices": (" yes", "")}, "non-empty strings"),
        ({"answer": " yes", "choices": (" yes", " no"), "label": True}, "must be an integer"),
    ],
)
def test_invalid_samples_are_refused(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(SampleError, match=needle):
        Sample("s1", "Q?", **kwargs)  # type: ignore[arg-type]


def test_full_text_and_answer_span() -> None:
    sample = Sample("a", "Is it?\nAnswer:", " yes", (" no", " yes"))
    text = full_text(sample)
    start, end = answer_span(sample)
    assert text == "Is it?\nAnswer: yes"
    assert text[start:end] == " yes"
    assert full_text(sample, " no") == "Is it?\nAnswer: no"
    assert answer_span(sample, " no") == (14, 17)


def test_jsonl_round_trip(tmp_path: Path) -> None:
    samples = [
        Sample("x-1", "2+2=", " 4"),
        Sample("x-2", "Sky?\nAnswer:", " blue", (" red", " blue", " green")),
        Sample("x-3", "ünïcode ✓", " 🙂"),
    ]
    path = tmp_path / "out" / "s.jsonl"
    write_jsonl(samples, path)
    assert read_jsonl(path) == samples
    assert not [p for p in path.parent.iterdir() if p.name != "s.jsonl"]  # no temp file left


def test_jsonl_defaults_ids_and_answers_from_label(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "mine.jsonl",
        [
            {"prompt": "a", "answer": " b"},
            "",
            {"prompt": "c", "choices": [" d", " e"], "label": 1},
        ],
    )
    samples = read_jsonl(path)
    assert [s.id for s in samples] == ["mine-0", "mine-1"]
    assert samples[1].answer == " e" and samples[1].label == 1


@pytest.mark.parametrize(
    ("lines", "needles"),
    [
        ([{"prompt": "a", "answer": " b"}, "{not json"], [":2:", "not valid JSON"]),
        ([[1, 2]], [":1:", "JSON object"]),
        ([{"prompt": 3, "answer": " b"}], [":1:", "'prompt'"]),
        ([{"prompt": "a", "anwser": " b"}], [":1:", "'anwser'"]),
        ([{"prompt": "a"}], [":1:", "'answer'"]),
        ([{"prompt": "a", "answer": " b", "label": True, "choices": [" b"]}], [":1:", "'label'"]),
        ([{"prompt": "a", "choices": [" b"], "label": 4}], [":1:", "'label'", "outside"]),
        ([{"prompt": "a", "answer": " z", "choices": [" b"]}], [":1:", "'answer'"]),
        (
            [{"id": "q", "prompt": "a", "answer": " b"},
             {"id": "q", "prompt": "c", "answer": " d"}],
            [":2:", "'id'", "line 1"],
        ),
    ],
)
def test_jsonl_errors_name_line_and_field(
    tmp_path: Path, lines: list[object], needles: list[str]
) -> None:
    path = _write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(SampleError) as caught:
        read_jsonl(path)
    for needle in needles:
        assert needle in str(caught.value)


def test_write_refuses_duplicate_ids(tmp_path: Path) -> None:
    with pytest.raises(SampleError, match="more than once"):
        write_jsonl([Sample("a", "p", " x"), Sample("a", "q", " y")], tmp_path / "d.jsonl")
    assert not (tmp_path / "d.jsonl").exists()


def test_load_task_reads_a_jsonl_path(tmp_path: Path) -> None:
    samples = [Sample("k", "p", " x", (" x", " y"))]
    path = tmp_path / "task.jsonl"
    write_jsonl(samples, path)
    assert load_task(str(path)) == samples
    with pytest.raises(FileNotFoundError):
        load_task(str(tmp_path / "missing.jsonl"))
    with pytest.raises(LookupError, match="unknown task"):
        load_task("no_such_task")
