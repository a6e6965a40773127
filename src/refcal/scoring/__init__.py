"""Questions -> numbers for any task on any backend: batch plan, the one on-disk cache, resume, progress.

* :func:`score_questions`: option scores of a scoring task (:mod:`refcal.scoring.score`);
* :func:`hidden_states`: answer-position hidden states of letter prompts (:mod:`refcal.scoring.hidden`);
* both cached by :mod:`refcal.scoring.cache` under one key expression.
"""

from .cache import CACHE_VERSION, cache_key
from .hidden import HiddenStates, hidden_states
from .progress import PROGRESS_EVERY_S
from .score import score_questions

__all__ = ["CACHE_VERSION", "PROGRESS_EVERY_S", "HiddenStates", "cache_key", "hidden_states", "score_questions"]
