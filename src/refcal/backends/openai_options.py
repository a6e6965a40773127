"""Settings and request counters of :class:`~refcal.backends.openai.OpenAIBackend` (re-exported there)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import InputError
from .api_logprobs import is_num
from .base import BackendOptions

MODES = ("chat", "completions")
DEFAULT_API_BASE = "https://api.openai.com/v1"
MAX_TOP_LOGPROBS = 20
LETTER_MODES = ("auto", "exact", "topk")
MAX_TOKEN_IDS = 128  # vLLM's MAX_LOGPROB_TOKEN_IDS
#: spellings whose single token counts for a letter with ``letters="exact"`` (the top-k rule counts any
#: returned token that strips to the letter; these are the ones a first answer token plausibly takes)
LETTER_FORMS = ("{}", " {}", "\n{}", "{}\n")


@dataclass
class APIStats:
    """Counters over the life of a backend (shown in reports).

    ``n_requests``: requests scored; ``n_floored_letters``: letters that got the floor;
    ``n_requests_with_floor``: requests with at least one floored letter; ``n_letters``: letters
    scored in total; ``n_retries``: HTTP attempts that were retried; ``n_no_token``: answers with no
    first token at all (the model ended at once, e.g. llama.cpp's server then returns no
    log-probabilities): every letter of those is floored (a uniform row); ``n_one_alternative``: top-k
    answers that held only the sampled token (a server ignoring ``top_logprobs``: after
    :data:`refcal.backends.openai.IGNORED_TOPK_AFTER` such answers and no other, the backend refuses it).
    """

    n_requests: int = 0
    n_letters: int = 0
    n_floored_letters: int = 0
    n_requests_with_floor: int = 0
    n_retries: int = 0
    n_no_token: int = 0
    n_one_alternative: int = 0
    #: how letters were scored: "exact" (fixed token set), "topk" (top-k with the floor), or
    #: "unresolved" (no letter request sent by this backend yet)
    letter_source: str = "unresolved"
    #: why letters="auto" fell back to the top-k ("" when it did not); kept in the stats so that it also
    #: reaches the driver from Ray actors
    letters_note: str = ""

    def as_dict(self) -> dict[str, int | str]:
        return asdict(self)


@dataclass(frozen=True)
class OpenAIOptions(BackendOptions):
    """Settings of :class:`OpenAIBackend` (see its parameters); unknown keys are refused."""

    backend = "openai:"

    api_base: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    mode: str = "chat"
    top_logprobs: int = MAX_TOP_LOGPROBS
    concurrency: int = 4
    timeout: float = 30.0
    max_retries: int = 5
    floor_margin: float = math.log(2.0)
    seed: int | None = 0
    letters: str = "auto"
    backoff_base: float = 0.5
    backoff_max: float = 20.0
    max_wait: float = 120.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.letters not in LETTER_MODES:
            raise InputError(f"letters must be one of {LETTER_MODES}, got {self.letters!r}")
        if not is_int(self.top_logprobs) or not 1 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise InputError(f"top_logprobs must be an integer in 1..{MAX_TOP_LOGPROBS}, got {self.top_logprobs!r}")
        if not is_int(self.concurrency) or self.concurrency < 1:
            raise InputError(f"concurrency must be a positive integer, got {self.concurrency!r}")
        if not is_int(self.max_retries) or self.max_retries < 0:
            raise InputError(f"max_retries must be a non-negative integer, got {self.max_retries!r}")
        if not (is_num(self.timeout) and self.timeout > 0 and is_num(self.floor_margin) and self.floor_margin > 0):
            raise InputError("timeout and floor_margin must be positive numbers")


def is_int(v: Any) -> bool:
    """An int (not a bool)."""
    return isinstance(v, int) and not isinstance(v, bool)
