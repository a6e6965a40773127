"""The method registry: every way of turning option logits into probabilities that a run compares.

One :class:`Method` entry per method says how it is named (``key`` in ``metrics.json["methods"]``,
``label`` in tables, ``color`` in plots), what it needs (labels of the calibration questions, the base
model's logits), and how it is fitted and applied::

    fitted = method.fit(base_logits, chat_logits, labels, scaling=...)   # None for fit-free methods
    log_probs = method.apply(fitted, base_logits, chat_logits)          # (n, k) log-probabilities

``run``, the report, the plots and the command line read :data:`METHODS`; adding a method is one entry.
A method that cannot apply to a run says why through :meth:`Method.why_not`, and the run lists it with
that reason instead of leaving it out silently.

A method with a ``source`` reads another score set of the chat model in place of its letter / cloze scores
(``cape``: letter scores over the k cyclic shifts of the options; ``elicitation`` /
``elicitation_ensemble``: generated answers with a stated confidence, see :mod:`refcal.tasks.elicit`); the
run scores that source once and passes it as ``chat`` to ``fit`` and ``apply``. A ``top_label`` method's
``apply`` returns a :class:`refcal.metrics.TopLabel` (an answer and its confidence, no distribution): its
metrics are those of confidence and correctness, and its NLL and multiclass Brier score are undefined.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._math import log_softmax
from ..errors import InputError

__all__ = ["Method", "MethodContext", "METHODS", "HIDDEN_SOURCE", "DEFAULT_METHODS", "NO_GENERATION_METHODS", "get_method",
           "parse_methods", "ordered_keys", "method_label", "method_color"]


@dataclass(frozen=True)
class MethodContext:
    """What a run offers the methods: labels on the calibration questions, a base model's logits, and the
    ``--scaling`` family chosen for the methods that follow it."""

    has_labels: bool
    has_base: bool = True
    scaling: str = "temperature"
    scoring: str = "letter"
    #: both models' answer-position hidden states were extracted (local transformers models; ``proj``)
    hidden_states: bool = False


#: ``fit(base_logits, chat_logits, labels, *, scaling) -> fitted calibrator`` (labels is None without labels)
FitFn = Callable[..., Any]
#: ``apply(fitted, base_logits, chat_logits) -> log-probabilities``
ApplyFn = Callable[[Any, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Method:
    """One calibration method (or reference model) as a run compares it.

    Attributes
    ----------
    key : str
        Name in ``metrics.json["methods"]``, ``predictions/<key>.parquet`` and ``--methods``.
    label : str
        Human-readable name for tables and plot legends.
    color : str
        Plot colour (hex), fixed per method so every figure agrees.
    needs_labels : bool
        Fitting uses the labels of the calibration questions (a labelled oracle).
    needs_base : bool
        Fitting or applying uses the base model's logits.
    fit : callable or None
        ``fit(base, chat, labels, *, scaling)`` -> fitted object; ``None`` when nothing is fitted. May raise
        :class:`~refcal.errors.FitError`; the run then evaluates that unit with the chat model unchanged.
    apply : callable
        ``apply(fitted, base, chat)`` -> (n, k) log-probabilities of the evaluation questions.
    default : bool
        Part of the default selection of ``refcal run``.
    source : str or None
        Score set of the chat model read in place of its letter / cloze scores (see the module docstring).
    needs_generation : bool
        The source is generated text (slow): left out of ``--methods no-generation``.
    scorings : tuple of str or None
        The ``--scoring`` modes the method applies to (``None``: every one).
    top_label : bool
        ``apply`` returns a :class:`refcal.metrics.TopLabel` instead of log-probabilities.
    """

    key: str
    label: str
    color: str
    needs_labels: bool
    needs_base: bool
    fit: FitFn | None
    apply: ApplyFn
    default: bool = False
    source: str | None = None
    needs_generation: bool = False
    scorings: tuple[str, ...] | None = None
    top_label: bool = False

    def why_not(self, ctx: MethodContext) -> str | None:
        """The reason this method cannot apply to a run offering ``ctx``, or ``None`` when it can."""
        if self.scorings is not None and ctx.scoring not in self.scorings:
            if ctx.scoring == self.source == "cape":  # not a limitation: the run's chat scores are CAPE's
                return ("under --scoring cape the chat model's scores are CAPE already (the chat model (vanilla) "
                        "row, which every calibrator starts from); use --scoring letter to compare CAPE with "
                        "plain letter scores")
            return (f"applies to {' / '.join(self.scorings)} scoring only (the options of a {ctx.scoring} run "
                    "have no order or letters to permute or name); use --scoring letter")
        if self.needs_labels and not ctx.has_labels:
            return "needs labels, and some questions have none"
        if self.needs_base and not ctx.has_base:
            return "needs the base model's scores"
        return None


# ---------------------------------------------------------------------------------------------- fit / apply
def _chat(_fitted: Any, base: np.ndarray, chat: np.ndarray) -> np.ndarray:
    return log_softmax(chat)


def _base(_fitted: Any, base: np.ndarray, chat: np.ndarray) -> np.ndarray:
    return log_softmax(base)


def _calibrated_chat(fitted: Any, base: np.ndarray, chat: np.ndarray) -> np.ndarray:
    return fitted.predict_log_proba(chat)


def _alignment(cls_name: str, fixed: str | None = None) -> FitFn:
    """A label-free calibrator fitted on (base, chat); ``fixed`` pins its scaling family."""

    def fit(base: np.ndarray, chat: np.ndarray, labels: np.ndarray | None, *, scaling: str = "temperature") -> Any:
        from . import alignment

        return getattr(alignment, cls_name)(scaling=fixed or scaling).fit(base, chat)

    return fit


def _pair_fit(module: str, cls_name: str) -> FitFn:
    """A label-free calibrator of :mod:`refcal.calibrate.<module>` fitted on (base, chat); it has one
    form only, so ``--scaling`` does not apply to it, and it never sees the labels."""

    def fit(base: np.ndarray, chat: np.ndarray, labels: np.ndarray | None, *, scaling: str = "temperature") -> Any:
        import importlib

        return getattr(importlib.import_module(f"{__package__}.{module}"), cls_name)().fit(base, chat)

    return fit


def _calibrated_pair(fitted: Any, base: np.ndarray, chat: np.ndarray) -> np.ndarray:
    """A calibrator that reads both models' logits at apply time (their agreement); a stand-in for a failed
    fit (``run.evaluate.Unfitted``) takes the chat logits only."""
    from .agreement import AgreementDACA

    if isinstance(fitted, AgreementDACA):
        return fitted.predict_log_proba(base, chat)
    return fitted.predict_log_proba(chat)


def _reeval(_fitted: Any, base: np.ndarray, chat: np.ndarray) -> Any:
    """BaseCal-ReEval (METHODS.md §1.4): the chat model's answer (its argmax option), with the base model's
    softmax probability of that option as the confidence, as a :class:`refcal.metrics.TopLabel`.

    No distribution over the other options is defined, and none is made up: the obvious completion
    (the rest spread in proportion to the base model's probabilities) is the base model's own
    distribution, whose argmax is the base model's answer, not the chat model's. So ECE, MCE, AECE, the
    top-label Brier score, accuracy, AUROC and AURC are exact, and the NLL is undefined.
    """
    from ..metrics import TopLabel

    a = np.argmax(chat, axis=1)
    return TopLabel(a.astype(np.int64), np.exp(log_softmax(base)[np.arange(len(a)), a]))


def _stated(_fitted: Any, base: np.ndarray, chat: np.ndarray) -> Any:
    """An elicitation source (rows ``[answered option or -1, stated confidence]``) as a TopLabel."""
    from ..metrics import TopLabel

    return TopLabel(np.asarray(chat[:, 0], dtype=np.int64), np.clip(np.asarray(chat[:, 1], dtype=np.float64), 0, 1))


#: ``source`` of a method reading both models' answer-position hidden states (``proj``): not a score set of the
#: chat model but :class:`refcal.calibrate.proj.ProjInputs`, extracted by the run from local models
HIDDEN_SOURCE = "hidden_states"


class _HiddenStateMethod(Method):
    """A method reading both models' hidden states (``proj``): letter scoring with local models only."""

    def why_not(self, ctx: MethodContext) -> str | None:
        if ctx.scoring != "letter":
            return ("applies to letter scoring only: a cloze option's score sums log-probabilities over the "
                    "positions of its own tokens, so there is no single answer position whose hidden state the "
                    "base model's head could read over the options; use --scoring letter")
        if not ctx.hidden_states:
            return ("needs both models' hidden states: local transformers models only (not openai: or fake: "
                    "models, not --ray)")
        return super().why_not(ctx)


def _proj_fit(base: np.ndarray, chat: Any, labels: np.ndarray | None, *, scaling: str = "temperature") -> Any:
    """BaseCal-Proj on a :class:`~refcal.calibrate.proj.ProjInputs`: the map reads hidden states only."""
    from .proj import BaseCalProj

    return BaseCalProj().fit(chat.chat_hidden, chat.base_hidden)


def _proj_apply(fitted: Any, base: np.ndarray, chat: Any) -> Any:
    """The chat model's answer with its projected base-head probability (a TopLabel); the chat model's own
    confidence where the fit failed (``run.evaluate.Unfitted``)."""
    from ..metrics import TopLabel
    from .proj import BaseCalProj

    if isinstance(fitted, BaseCalProj):
        return TopLabel(*fitted.predict_top_label(chat.chat_hidden, chat.head, chat.chat_logits))
    lp = log_softmax(chat.chat_logits)
    b = np.argmax(lp, axis=1)
    return TopLabel(b.astype(np.int64), np.exp(lp[np.arange(b.size), b]))


_ORACLES = {"temperature": "TemperatureScaling", "vector": "VectorScaling", "matrix": "MatrixScaling"}


def _oracle(fixed: str | None = None) -> FitFn:
    """A labelled calibrator fitted on (chat, labels); ``fixed`` pins its family, else ``--scaling``'s."""

    def fit(base: np.ndarray, chat: np.ndarray, labels: np.ndarray | None, *, scaling: str = "temperature") -> Any:
        from . import labelled

        if labels is None:
            raise InputError("a labelled oracle needs the labels of the calibration questions")
        return getattr(labelled, _ORACLES[fixed or scaling])().fit(chat, labels)

    return fit


def _few_label(cls_name: str) -> FitFn:
    """A few-label calibrator of :mod:`refcal.calibrate.fewlabel` fitted on (chat, labels) of the labelled
    calibration questions; ``--scaling`` does not apply to it."""

    def fit(base: np.ndarray, chat: np.ndarray, labels: np.ndarray | None, *, scaling: str = "temperature") -> Any:
        from . import fewlabel

        if labels is None:
            raise InputError("a labelled calibrator needs the labels of the calibration questions")
        known = np.asarray(labels) >= 0
        return getattr(fewlabel, cls_name)().fit(np.asarray(chat)[known], np.asarray(labels)[known])

    return fit


def _daca_k(base: np.ndarray, chat: np.ndarray, labels: np.ndarray | None, *, scaling: str = "temperature") -> Any:
    """DACA + k labels on every calibration question's logits and the known labels (-1: unlabelled)."""
    from .daca_prior import DACAWithLabels

    y = np.full(np.shape(chat)[0], -1, dtype=np.int64) if labels is None else labels
    return DACAWithLabels().fit(base, chat, y)


#: Every method, in table order. Default selection: chat, base, naive, daca, ts (the paper's comparison) and
#: daca_agree, which beat DACA on 10 of the 11 packaged real settings and tied the 11th within its interval
#: (docs/RESULTS.md, docs/METHODS.md §4: the rule of issue 13 for making a new method a default).
METHODS: dict[str, Method] = {m.key: m for m in (
    Method("chat", "chat model (vanilla)", "#d62728", False, False, None, _chat, default=True),
    Method("base", "base model", "#2ca02c", False, True, None, _base, default=True),
    Method("naive", "naive alignment", "#ff7f0e", False, True, _alignment("NaiveAlignment"), _calibrated_chat,
           default=True),
    Method("daca", "DACA", "#1f77b4", False, True, _alignment("DACA"), _calibrated_chat, default=True),
    Method("ts", "temperature scaling (labelled oracle)", "#9467bd", True, False, _oracle(), _calibrated_chat,
           default=True),
    Method("daca_vector", "DACA (vector scaling)", "#17becf", False, True, _alignment("DACA", "vector"),
           _calibrated_chat),
    Method("daca_matrix", "DACA (matrix scaling)", "#8c564b", False, True, _alignment("DACA", "matrix"),
           _calibrated_chat),
    Method("vs", "vector scaling (labelled oracle)", "#e377c2", True, False, _oracle("vector"), _calibrated_chat),
    Method("ms", "matrix scaling (labelled oracle)", "#7f7f7f", True, False, _oracle("matrix"), _calibrated_chat),
    Method("cape", "CAPE (option permutations)", "#bcbd22", False, False, None, _chat, source="cape",
           scorings=("letter",)),
    Method("reeval", "BaseCal-ReEval (base re-evaluates)", "#aec7e8", False, True, None, _reeval, top_label=True),
    Method("elicitation", "verbal elicitation (Tian)", "#ff9896", False, False, None, _stated,
           source="elicitation", needs_generation=True, top_label=True),
    Method("elicitation_ensemble", "elicitation ensemble (Xiong, mean confidence)", "#c49c94", False, False, None,
           _stated, source="elicitation_ensemble", needs_generation=True, top_label=True),
    Method("daca_agree", "agreement-aware DACA", "#393b79", False, True, _pair_fit("agreement", "AgreementDACA"),
           _calibrated_pair, default=True),
    Method("mutual", "mutual calibration", "#637939", False, True, _pair_fit("mutual", "MutualCalibration"),
           _calibrated_chat),
    Method("platt", "Platt scaling (labelled, top-label)", "#9edae5", True, False, _few_label("PlattScaling"),
           _calibrated_chat),
    Method("isotonic", "isotonic regression (labelled, top-label)", "#dbdb8d", True, False,
           _few_label("IsotonicCalibration"), _calibrated_chat),
    Method("histogram", "histogram binning (labelled, top-label)", "#c5b0d5", True, False,
           _few_label("HistogramBinning"), _calibrated_chat),
    Method("daca_k", "DACA + k labels (DACA prior, labelled)", "#e6550d", True, True, _daca_k, _calibrated_chat),
    _HiddenStateMethod("proj", "BaseCal-Proj (hidden-state map)", "#e7969c", False, True, _proj_fit, _proj_apply,
                       source=HIDDEN_SOURCE, top_label=True),
)}

DEFAULT_METHODS: tuple[str, ...] = tuple(k for k, m in METHODS.items() if m.default)
#: ``--methods no-generation``: every method whose inputs need no generated text (the cheap full comparison)
NO_GENERATION_METHODS: tuple[str, ...] = tuple(k for k, m in METHODS.items() if not m.needs_generation)
#: ``--methods`` keywords: the bare ``refcal run`` selection, everything but generation, everything
KEYWORDS = {"default": DEFAULT_METHODS, "no-generation": NO_GENERATION_METHODS, "all": tuple(METHODS)}


def get_method(key: str) -> Method:
    """The registry entry of ``key``; :class:`~refcal.errors.InputError` naming the known keys otherwise."""
    try:
        return METHODS[key]
    except KeyError:
        raise InputError(f"unknown method {key!r}; choose from {', '.join(METHODS)} (or {', '.join(KEYWORDS)})") \
            from None


def parse_methods(value: str | Iterable[str] | None) -> list[str]:
    """``--methods``: ``None`` -> the defaults; a comma-separated list of keys and keywords (``default``:
    chat, base, naive, daca, ts; ``no-generation``: every method needing no generated text; ``all``),
    kept in table order."""
    if value is None:
        return list(DEFAULT_METHODS)
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    items = [v for v in items if v]
    if not items:
        raise InputError(f"--methods is empty; choose from {', '.join(METHODS)} (or {', '.join(KEYWORDS)})")
    chosen = {k for v in items for k in (KEYWORDS[v] if v in KEYWORDS else (get_method(v).key,))}
    return [k for k in METHODS if k in chosen]


def ordered_keys(keys: Iterable[str]) -> list[str]:
    """``keys`` in registry (table) order, then any key the registry does not know, alphabetically."""
    keys = set(keys)
    return [k for k in METHODS if k in keys] + sorted(keys - set(METHODS))


def method_label(key: str, labels: dict[str, str] | None = None) -> str:
    """``labels[key]`` if given (a run's own labels), else the registry's label, else ``key`` itself."""
    if labels and key in labels:
        return labels[key]
    return METHODS[key].label if key in METHODS else key


_CYCLE: Sequence[str] = ("#bcbd22", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896")


def method_color(key: str, index: int = 0) -> str:
    """The registry's colour of ``key``; a method it does not know gets a colour from a fixed cycle."""
    return METHODS[key].color if key in METHODS else _CYCLE[index % len(_CYCLE)]
