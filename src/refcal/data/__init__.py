"""Data sets -> lists of :class:`Question`.

Built-in names (packaged data, no network at run time; see :func:`list_datasets`) and user files
(JSONL / JSON / CSV / TSV / Parquet / Hugging Face ``save_to_disk`` folders with a column mapping) go
through one entry point, :func:`load_dataset`.
"""

from .base import Question
from .freeform import FreeformQuestion
from .mmlu import mmlu_subjects
from .registry import DatasetInfo, default_split, fewshot_examples, list_datasets, load_dataset, load_freeform

__all__ = [
    "DatasetInfo",
    "FreeformQuestion",
    "Question",
    "default_split",
    "fewshot_examples",
    "list_datasets",
    "load_dataset",
    "load_freeform",
    "mmlu_subjects",
]
