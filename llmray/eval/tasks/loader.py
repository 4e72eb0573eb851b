"""`custom_dataset` of the built-in task YAMLs: a JSONL file next to this module -> a one-split DatasetDict.

lm-eval calls it as `custom_dataset(**metadata, **dataset_kwargs)`; only `file` matters here. Reading
the file from this folder (not a `dataset_path` relative to the working directory) keeps the tasks
runnable from any directory and offline.
"""

from __future__ import annotations

import json
from pathlib import Path


def load(file: str, split: str = "test", **_unused):
    import datasets

    path = Path(__file__).parent / file
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)})
