"""The option-score set and its files: :class:`ScoreSet`, :func:`load_scores` (by content), :func:`join_scores`.

File formats
------------
Parquet (the native format, written by ``refcal score``/``apply``), one row per question:

============  =====================  ==========================================================
column        type                   meaning
============  =====================  ==========================================================
``id``        string                 unique question id
``logits``    list<double>           one score per option, in option order; ``null`` or -inf
                                     marks a missing option; the list length is the number of
                                     options of that question (ragged is fine)
``label``     int64, nullable        index of the correct option, ``null`` when unknown
others        any scalar             kept as per-question columns (e.g. ``subject``)
============  =====================  ==========================================================

File-level metadata (model, dataset, split, template, scoring, ...) is stored as JSON under the
Parquet key ``refcal``.

JSON Lines is accepted as input (and can be written), one object per question::

    {"id": "q1", "logits": [1.2, -0.3, 0.5, 0.1], "label": 2}

``label`` may be ``null`` or absent; other scalar keys become per-question columns.
"""

from .blocks import BLOCK_ROWS, NotStreamable, OrderMismatch, is_streamable, iter_blocks
from .files import (
    SCORE_SUFFIXES,
    check_output_path,
    file_meta,
    load_scores,
    parse_score_line,
    score_file_magic,
)
from .join import JoinedScores, join_scores
from .lmeval import LMEVAL_METRICS, is_lmeval_log, read_lmeval
from .scoreset import (
    FORMAT_VERSION,
    LOGIT_LIMIT,
    LOGIT_RULE,
    QUESTION_HASH,
    ScoreSet,
    bad_logits,
    describe_logit,
    question_hash,
)

__all__ = [
    "BLOCK_ROWS", "FORMAT_VERSION", "LMEVAL_METRICS", "LOGIT_LIMIT", "LOGIT_RULE", "QUESTION_HASH", "SCORE_SUFFIXES",
    "JoinedScores", "NotStreamable", "OrderMismatch", "ScoreSet", "bad_logits", "check_output_path", "describe_logit",
    "file_meta", "is_lmeval_log", "is_streamable", "iter_blocks", "join_scores", "load_scores", "parse_score_line",
    "question_hash", "read_lmeval", "score_file_magic",
]
