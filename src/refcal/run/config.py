"""The configuration of a run (:class:`RunConfig`), its defaults and its validation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .._urls import public_url
from ..calibrate.methods import DEFAULT_METHODS, parse_methods
from ..errors import InputError
from ..options import CLOZE_SCORINGS, SCORINGS, TEMPLATE_IDS, check_cape_options, is_api_model

#: The embedded default: the packaged cross-family pair on a data set where both are above chance.
DEFAULT_BASE = "gemma-3-270m"
DEFAULT_CHAT = "smollm2-135m-instruct"
DEFAULT_DATASET = "sciq"
DEFAULT_LIMIT = 400
SCALINGS: tuple[str, ...] = ("temperature", "vector", "matrix")
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")


@dataclass
class RunConfig:
    """Everything that defines a run; written to ``config.json`` (and ``metrics.json["config"]``).

    ``methods`` are keys of :data:`refcal.calibrate.methods.METHODS` (default: chat, base, naive, daca,
    ts); ``limit`` ``None`` scores every question; ``cache_dir`` ``None`` uses the default score cache.
    """

    base: str = DEFAULT_BASE
    chat: str = DEFAULT_CHAT
    dataset: str = DEFAULT_DATASET
    split: str | None = None
    calib_split: str | None = None
    subjects: list[str] | None = None
    templates: list[int] = field(default_factory=lambda: [1])
    scoring: str = "cloze"
    chat_template: bool = False
    fewshot: int = 0
    limit: int | None = DEFAULT_LIMIT
    n_splits: int = 5
    calib_frac: float = 0.3
    scaling: str = "temperature"
    n_bins: int = 10
    seed: int = 0
    batch_size: int = 8
    api_base: str | None = None
    #: ``--api-letters``: the ``letters`` option of the ``openai:`` models (auto | exact | topk); None: theirs
    api_letters: str | None = None
    device: str | None = None
    progress: bool = True
    columns: dict[str, Any] = field(default_factory=dict)  # column mapping for user data files
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    dtype: str | None = None
    cache_dir: str | None = None
    #: CAPE's members (``--scoring cape`` and the ``cape`` method): ``cyclic`` | ``all`` orders, ``one`` | ``all`` templates
    cape_orders: str = "cyclic"
    cape_templates: str = "one"
    #: score on Ray (:class:`refcal.backends.ray.RayOptions` fields: workers, address, num_cpus, num_gpus); None: here
    ray: dict[str, Any] | None = None
    #: ``--labels-budget``: label counts of the label-efficiency curve (None = every calibration label); None: no curve
    labels_budget: list[int | None] | None = None
    #: ``--labels-draws``: label draws per count of the curve
    labels_draws: int = 10

    def to_dict(self) -> dict[str, Any]:
        """The fields as written to ``config.json`` / ``metrics.json``: ``api_base`` in its public form
        (no user info nor credential-like query parameters, :func:`refcal._urls.public_url`)."""
        doc = asdict(self)
        if doc.get("api_base"):
            doc["api_base"] = public_url(doc["api_base"])
        return doc

    def validate(self) -> None:
        """Raise :class:`~refcal.errors.InputError` naming the flag of the first invalid setting."""
        if not 0.0 < self.calib_frac < 1.0:
            raise InputError(f"--calib-frac must be strictly between 0 and 1, got {self.calib_frac}")
        from ..options import MAX_BINS

        if isinstance(self.n_bins, bool) or not isinstance(self.n_bins, int) or not 1 <= self.n_bins <= MAX_BINS:
            raise InputError(f"--bins must be an integer from 1 to {MAX_BINS}, got {self.n_bins!r}")
        if self.n_splits < 1:
            raise InputError(f"--n-splits must be at least 1, got {self.n_splits}")
        bad = [t for t in self.templates if t not in TEMPLATE_IDS]
        if bad:
            raise InputError(f"--template must be 1..5 or 'all', got {bad[0]}")
        if self.scoring not in SCORINGS:
            raise InputError(f"--scoring must be one of {', '.join(SCORINGS)}, got {self.scoring!r}")
        if self.scoring in CLOZE_SCORINGS and len(self.templates) > 1:
            raise InputError("prompt templates apply to letter scoring only (cloze prompts have no instruction); "
                             "use --scoring letter with --template all, or one template")
        api = [m for m in (self.base, self.chat) if is_api_model(m)]
        # cloze scoring of an API model needs a server returning prompt log-probabilities (echo): checked
        # at its first answer (OpenAIBackend.score_cloze), not here
        if api and self.dtype:
            raise InputError("--dtype applies to local models, not openai:MODEL")
        check_api_letters(self)
        if self.limit is not None and self.limit < 2:
            raise InputError(f"--limit must be at least 2 (or 0 for every question), got {self.limit}")
        if self.scaling not in SCALINGS:
            raise InputError(f"--scaling must be one of {', '.join(SCALINGS)}, got {self.scaling!r}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise InputError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        self.methods = parse_methods(self.methods)
        check_cape_options(self.cape_orders, self.cape_templates)
        if (self.cape_orders, self.cape_templates) != ("cyclic", "one") and self.scoring != "cape" \
                and "cape" not in self.methods:
            raise InputError("--cape-orders / --cape-templates apply to CAPE only; add cape to --methods "
                             "(or use --scoring cape)")
        if self.labels_draws < 1:
            raise InputError(f"--labels-draws must be at least 1, got {self.labels_draws}")
        if self.ray is not None:
            from ..backends.ray import RayOptions

            RayOptions(**self.ray)  # refuses bad values with the flag's name


def check_api_letters(cfg: RunConfig) -> None:
    """``--api-letters`` needs an ``openai:`` model (it is given to those only) and a known value."""
    if cfg.api_letters is None:
        return
    if not any(is_api_model(m) for m in (cfg.base, cfg.chat)):
        raise InputError(f"--api-letters applies to openai:MODEL models; neither --base {cfg.base} nor "
                         f"--chat {cfg.chat} is one")
    from ..backends.openai import LETTER_MODES

    if cfg.api_letters not in LETTER_MODES:
        raise InputError(f"--api-letters must be one of {', '.join(LETTER_MODES)}, got {cfg.api_letters!r}")


__all__ = ["RunConfig", "DEFAULT_BASE", "DEFAULT_CHAT", "DEFAULT_DATASET", "DEFAULT_LIMIT", "SCALINGS", "DTYPES"]
