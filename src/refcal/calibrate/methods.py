"""The method registry: every way of turning a run's scores into confidences that a run compares, for both
task kinds (multiple-choice option logits, free-form answers).

One :class:`Method` entry per method says how it is named (``key`` in ``metrics.json["methods"]``,
``label`` in tables, ``color`` in plots), what it reads for each task kind (:class:`Inputs`: names of
the run's inputs; the driver of a kind computes each input once), and how it is fitted and applied:

* a **fitted** method names a calibrator of :data:`refcal.calibrate.CALIBRATORS`; the run fits it on the
  calibration questions with ``Calibrator.fit_roles(chat, base, labels)`` and applies it with
  ``predict_log_proba(chat, base)`` (``base`` only where the calibrator ``needs_base_at_apply``);
* a **fit-free** method has an ``apply(base, chat)`` function (the base model's probabilities, a stated
  confidence, ...).

``answer="chat"`` makes the result a :class:`refcal.metrics.TopLabel`: the chat model's answer (the argmax
of its scores) with the method's probability of it (ReEval, proj). A method whose ``apply`` returns a
TopLabel itself (verbal elicitation) is top-label too. Top-label methods have no NLL or multiclass Brier.

``refcal run``, ``fit``, ``apply``, ``evaluate``, the report, the plots and the table read :data:`METHODS`;
adding a method is one entry here (plus its calibrator class, for a fitted one). A method that cannot
apply to a run says why through :meth:`Method.why_not`, and the run lists it with that reason.

Inputs of a **multiple-choice** run: ``scores`` (the letter / cloze option logits of the run's scoring),
``cape`` (letter scores averaged over option orders), ``elicitation`` / ``elicitation_ensemble``
(generated answers with a stated confidence, :mod:`refcal.tasks.elicit`, rows ``[option or -1, confidence]``), ``hidden_states``
(a :class:`refcal.calibrate.proj.ProjInputs`). Inputs of a **free-form** run, each a 2-vector
``log [1 - c, c]`` per answer: ``scores`` (the model's P(True) letters, as logits), ``likelihood`` (the
answer's mean token probability under that model), ``verbal`` (the chat model's stated confidence); the
``verbal`` labels are the correctness of its own stated guess.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._math import log_softmax
from ..errors import InputError
from ..metrics import TopLabel
from .base import CALIBRATORS, Calibrator

__all__ = ["Method", "Inputs", "MethodContext", "METHODS", "KINDS", "MC", "FREEFORM", "DEFAULT_METHODS",
           "NO_GENERATION_METHODS", "get_method", "parse_methods", "default_methods", "ordered_keys",
           "method_label", "method_color", "fittable_methods", "method_keywords"]

MC, FREEFORM = "multiple-choice", "free-form"
#: the task kinds a run drives (``refcal.run.kinds``); the same names as a calibrator's ``task_``
KINDS = (MC, FREEFORM)


@dataclass(frozen=True)
class Inputs:
    """What a method reads in one task kind.

    ``chat`` / ``base``: names of the run's inputs read as the chat / base model's (``base=None``: the base
    model is not read); ``labels``: whose labels evaluate the method (``"labels"``: the questions';
    free-form ``verbal``: the correctness of its own guess); ``apply``: a fit-free function for this kind
    only (else the method's); ``label``: the method's name in this kind's tables (else the method's);
    ``needs``: one line on what it asks of the models (free-form ``metrics.json``); ``answer``: the
    method's ``answer`` in this kind (else the method's).
    """

    chat: str = "scores"
    base: str | None = None
    labels: str = "labels"
    apply: Callable[[Any, Any], Any] | None = None
    label: str | None = None
    needs: str = ""
    answer: str | None = None


@dataclass(frozen=True)
class MethodContext:
    """What a run offers the methods: its task kind, labels on the calibration questions, a base model, the
    ``--scaling`` family, the scoring mode, and the inputs it cannot compute (name -> why)."""

    has_labels: bool
    has_base: bool = True
    scaling: str = "temperature"
    scoring: str = "letter"
    kind: str = MC
    missing: Mapping[str, str] = field(default_factory=dict)
    #: the reason given to a labelled method when some questions have no label
    no_labels: str = "needs labels, and some questions have none"


@dataclass(frozen=True)
class Method:
    """One calibration method (or reference model) as a run compares it; see the module docstring.

    Attributes
    ----------
    key, label, color : str
        Name in ``metrics.json`` / ``--methods``, in tables, and its plot colour (fixed, so figures agree).
    inputs : mapping of kind -> Inputs
        What it reads in each task kind; a kind it does not name is one it does not apply to.
    calibrator : str, mapping or None
        The :data:`~refcal.calibrate.CALIBRATORS` key fitted on the calibration questions; a mapping
        ``{scaling: key}`` picks it by ``--scaling``; ``None``: nothing is fitted (``apply`` instead).
    params : mapping
        Fixed constructor arguments of the calibrator (``daca_vector``: ``scaling="vector"``).
    follows_scaling : bool
        The calibrator takes ``--scaling`` as its ``scaling`` argument.
    needs_labels : bool
        Fitting uses the labels of the calibration questions (a labelled oracle).
    apply : callable or None
        Fit-free: ``apply(base, chat)`` -> (n, k) log-probabilities or a TopLabel.
    answer : {"own", "chat"}
        ``"chat"``: a TopLabel of the chat model's answer with this method's probability of it.
    default : tuple of str
        The task kinds whose default selection of ``refcal run`` holds it.
    needs_generation : bool
        Its input is generated text (slow): left out of ``--methods no-generation``.
    scorings : tuple of str or None
        Multiple-choice scoring modes it applies to (``None``: every one); ``scoring_note`` says why.
    top_label : bool
        Multiple choice: its prediction is a TopLabel (``answer="chat"``, or a stated confidence).
    """

    key: str
    label: str
    color: str
    inputs: Mapping[str, Inputs]
    calibrator: str | Mapping[str, str] | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    follows_scaling: bool = False
    needs_labels: bool = False
    apply: Callable[[Any, Any], Any] | None = None
    answer: str = "own"
    default: tuple[str, ...] = ()
    needs_generation: bool = False
    scorings: tuple[str, ...] | None = None
    scoring_note: str | None = None
    #: multiple choice: its prediction is an answer and one confidence (a TopLabel), no distribution
    top_label: bool = False

    # ------------------------------------------------------------------ what it reads
    def reads(self, kind: str) -> Inputs:
        """Its :class:`Inputs` in ``kind`` (:class:`InputError` when it does not apply there)."""
        try:
            return self.inputs[kind]
        except KeyError:
            raise InputError(f"method {self.key!r} does not apply to {kind} questions; choose from "
                             f"{', '.join(k for k, m in METHODS.items() if kind in m.inputs)}") from None

    def needs_base(self, kind: str) -> bool:
        """It reads the base model in ``kind``."""
        return kind in self.inputs and self.inputs[kind].base is not None

    def kind_label(self, kind: str) -> str:
        """Its name in ``kind``'s tables."""
        return (self.inputs[kind].label if kind in self.inputs else None) or self.label

    def why_not(self, ctx: MethodContext) -> str | None:
        """The reason this method cannot apply to a run offering ``ctx``, or ``None`` when it can."""
        if ctx.kind not in self.inputs:
            return f"does not apply to {ctx.kind} questions"
        if ctx.kind == MC and self.scorings is not None and ctx.scoring not in self.scorings:
            if ctx.scoring == self.inputs[MC].chat == "cape":  # not a limitation: the run's scores are CAPE's
                return ("under --scoring cape the chat model's scores are CAPE already (the chat model (vanilla) "
                        "row, which every calibrator starts from); use --scoring letter to compare CAPE with "
                        "plain letter scores")
            return self.scoring_note or (f"applies to {' / '.join(self.scorings)} scoring only (the options of a "
                                         f"{ctx.scoring} run have no order or letters to permute or name); use "
                                         "--scoring letter")
        inputs = self.inputs[ctx.kind]
        for name in (inputs.chat, inputs.base and f"base_{inputs.base}"):  # the base model's: base_<name>
            if name in ctx.missing:
                return ctx.missing[name]
        if self.needs_labels and not ctx.has_labels:
            return ctx.no_labels
        if self.needs_base(ctx.kind) and not ctx.has_base:
            return "needs the base model's scores"
        return None

    # ------------------------------------------------------------------ fit and apply
    def calibrator_class(self, scaling: str = "temperature") -> type[Calibrator] | None:
        """The calibrator class fitted for ``--scaling`` (``None`` for a fit-free method)."""
        if self.calibrator is None:
            return None
        key = self.calibrator if isinstance(self.calibrator, str) else self.calibrator[scaling]
        return CALIBRATORS[key]

    def make(self, scaling: str = "temperature", **overrides: Any) -> Calibrator:
        """An unfitted calibrator of this method (``overrides``: further constructor arguments, e.g. ``l2``)."""
        cls = self.calibrator_class(scaling)
        if cls is None:
            raise InputError(f"method {self.key!r} fits nothing")
        params = dict(self.params)
        if self.follows_scaling:
            params["scaling"] = scaling
        return cls(**params, **overrides)

    def fit(self, chat: Any, base: Any, labels: Any, *, scaling: str = "temperature") -> Calibrator | None:
        """The fitted calibrator (``None`` for a fit-free method); may raise :class:`~refcal.errors.FitError`."""
        if self.calibrator is None:
            return None
        return self.make(scaling).fit_roles(chat, base, labels if self.needs_labels else None)

    def predict(self, fitted: Calibrator | None, chat: Any, base: Any, chat_scores: np.ndarray, kind: str = MC) -> Any:
        """(n, k) log-probabilities, or a TopLabel, of the evaluation questions in a run of ``kind``.

        ``chat`` / ``base``: the method's inputs of these questions; ``chat_scores``: the chat model's own
        scores (its answer). A fitted method whose fit failed (``fitted is None``) is the chat model unchanged.
        """
        inputs = self.reads(kind)
        if self.calibrator is None:
            out = (inputs.apply or self.apply)(base, chat)  # type: ignore[misc]
        elif fitted is None:
            out = log_softmax(chat_scores)
        else:
            out = fitted.predict_log_proba(chat, base if fitted.needs_base_at_apply else None)
        if (inputs.answer or self.answer) == "chat":
            b = np.argmax(chat_scores, axis=1)
            return TopLabel(b.astype(np.int64), np.exp(out[np.arange(b.size), b]))
        return out


# ---------------------------------------------------------------------------------------------- fit-free
def _chat(base: Any, chat: np.ndarray) -> np.ndarray:
    return log_softmax(chat)


def _base(base: np.ndarray, chat: Any) -> np.ndarray:
    return log_softmax(base)


def _chat_as_is(base: Any, chat: np.ndarray) -> np.ndarray:
    """A free-form input that is already ``log [1 - c, c]``."""
    return chat


def _base_as_is(base: np.ndarray, chat: Any) -> np.ndarray:
    return base


def _stated(base: Any, chat: np.ndarray) -> TopLabel:
    """An elicitation input (rows ``[answered option or -1, stated confidence]``) as a TopLabel."""
    return TopLabel(np.asarray(chat[:, 0], dtype=np.int64), np.clip(np.asarray(chat[:, 1], dtype=np.float64), 0, 1))


_BOTH = (MC, FREEFORM)
_MC_SCORES, _MC_PAIR = {MC: Inputs()}, {MC: Inputs(base="scores")}
_P_TRUE = "both models' P(True) letters, no labels"
_PROJ_NOTE = ("applies to letter scoring only: a cloze option's score sums log-probabilities over the positions "
              "of its own tokens, so there is no single answer position whose hidden state the base model's "
              "head could read over the options; use --scoring letter")
_ORACLES = {"temperature": "ts", "vector": "vs", "matrix": "ms"}

#: Every method, in table order. Default selection of multiple-choice runs: chat, base, naive, daca, ts (the
#: paper's comparison) and daca_agree, which beat DACA on 10 of the 11 packaged real settings and tied the 11th
#: within its interval (docs/RESULTS.md, docs/METHODS.md §4: the rule of issue 13 for a new default); of
#: free-form runs: every free-form method.
METHODS: dict[str, Method] = {m.key: m for m in (
    Method("chat", "chat model (vanilla)", "#d62728",
           {MC: Inputs(), FREEFORM: Inputs(label="chat P(True)", needs="chat model: P(True) letters")},
           apply=_chat, default=_BOTH),
    Method("base", "base model", "#2ca02c",
           {MC: Inputs(base="scores"),
            FREEFORM: Inputs(base="scores", label="base P(True)", needs="base model: P(True) letters")},
           apply=_base, default=_BOTH),
    Method("naive", "naive alignment", "#ff7f0e", {MC: Inputs(base="scores"), FREEFORM: Inputs(base="scores", needs=_P_TRUE)},
           calibrator="naive", follows_scaling=True, default=_BOTH),
    Method("daca", "DACA", "#1f77b4", {MC: Inputs(base="scores"), FREEFORM: Inputs(base="scores", needs=_P_TRUE)},
           calibrator="daca", follows_scaling=True, default=_BOTH),
    Method("ts", "temperature scaling (labelled oracle)", "#9467bd",
           {MC: Inputs(), FREEFORM: Inputs(label="TS of P(True) (oracle)", needs="chat model's P(True) letters and "
                                            "the labels of the calibration questions")},
           calibrator=_ORACLES, needs_labels=True, default=_BOTH),
    Method("daca_vector", "DACA (vector scaling)", "#17becf", _MC_PAIR, calibrator="daca", params={"scaling": "vector"}),
    Method("daca_matrix", "DACA (matrix scaling)", "#8c564b", _MC_PAIR, calibrator="daca", params={"scaling": "matrix"}),
    Method("vs", "vector scaling (labelled oracle)", "#e377c2", _MC_SCORES, calibrator="vs", needs_labels=True),
    Method("ms", "matrix scaling (labelled oracle)", "#7f7f7f", _MC_SCORES, calibrator="ms", needs_labels=True),
    Method("cape", "CAPE (option permutations)", "#bcbd22", {MC: Inputs(chat="cape")}, apply=_chat,
           scorings=("letter",)),
    Method("reeval", "BaseCal-ReEval (base re-evaluates)", "#aec7e8",
           {MC: Inputs(base="scores"),
            FREEFORM: Inputs(base="likelihood", apply=_base_as_is, answer="own", label="ReEval (base likelihood)",
                             needs="base model: teacher-forced answer log-probabilities (cloze), no labels")},
           apply=_base, answer="chat", default=(FREEFORM,), top_label=True),
    Method("elicitation", "verbal elicitation (Tian)", "#ff9896", {MC: Inputs(chat="elicitation")}, apply=_stated,
           needs_generation=True, top_label=True),
    Method("elicitation_ensemble", "elicitation ensemble (Xiong, mean confidence)", "#c49c94",
           {MC: Inputs(chat="elicitation_ensemble")}, apply=_stated, needs_generation=True, top_label=True),
    Method("daca_agree", "agreement-aware DACA", "#393b79",
           {MC: Inputs(base="scores"), FREEFORM: Inputs(base="scores", needs=_P_TRUE)}, calibrator="daca_agree",
           default=(MC,)),
    Method("mutual", "mutual calibration", "#637939",
           {MC: Inputs(base="scores"), FREEFORM: Inputs(base="scores", needs=_P_TRUE)}, calibrator="mutual"),
    Method("proj", "BaseCal-Proj (hidden-state map)", "#e7969c", {MC: Inputs(chat="hidden_states")},
           calibrator="proj", answer="chat", scorings=("letter",), scoring_note=_PROJ_NOTE, top_label=True),
    Method("platt", "Platt scaling (labelled, top-label)", "#9edae5", _MC_SCORES, calibrator="platt",
           needs_labels=True),
    Method("isotonic", "isotonic regression (labelled, top-label)", "#dbdb8d", _MC_SCORES, calibrator="isotonic",
           needs_labels=True),
    Method("histogram", "histogram binning (labelled, top-label)", "#c5b0d5", _MC_SCORES, calibrator="histogram",
           needs_labels=True),
    Method("daca_k", "DACA + k labels (DACA prior, labelled)", "#e6550d", _MC_PAIR, calibrator="daca_k",
           needs_labels=True),
    Method("likelihood", "chat: answer likelihood", "#98df8a",
           {FREEFORM: Inputs(chat="likelihood", needs="chat model: teacher-forced answer log-probabilities (cloze)")},
           apply=_chat_as_is, default=(FREEFORM,)),
    Method("verbal", "verbal (Tian et al.)", "#ffbb78",
           {FREEFORM: Inputs(chat="verbal", labels="verbal",
                             needs="chat model: a second generation (Tian prompt), parsed")},
           apply=_chat_as_is, default=(FREEFORM,), needs_generation=True),
)}


def default_methods(kind: str = MC) -> tuple[str, ...]:
    """The keys of ``kind``'s default selection, in table order."""
    return tuple(k for k, m in METHODS.items() if kind in m.default and kind in m.inputs)


def method_keywords(kind: str = MC) -> dict[str, tuple[str, ...]]:
    """The ``--methods`` keywords of a task kind and the method keys each stands for."""
    return _keywords(kind)


def _keywords(kind: str) -> dict[str, tuple[str, ...]]:
    """``--methods`` keywords: the bare ``refcal run`` selection, everything but generation, everything."""
    every = tuple(k for k, m in METHODS.items() if kind in m.inputs)
    return {"default": default_methods(kind), "no-generation": tuple(k for k in every if not METHODS[k].needs_generation),
            "all": every}


DEFAULT_METHODS: tuple[str, ...] = default_methods(MC)
NO_GENERATION_METHODS: tuple[str, ...] = _keywords(MC)["no-generation"]


#: keys of the previous build, refused with the new name (their meaning moved, so no silent alias)
RENAMED = {"p_true": "p_true is now chat (the chat model's P(True)); the answer likelihood, formerly chat, is "
                     "now likelihood"}


def get_method(key: str) -> Method:
    """The registry entry of ``key``; :class:`~refcal.errors.InputError` naming the known keys otherwise."""
    if key in RENAMED:
        raise InputError(f"unknown method {key!r}: {RENAMED[key]}")
    try:
        return METHODS[key]
    except KeyError:
        raise InputError(f"unknown method {key!r}; choose from {', '.join(METHODS)} (or default, no-generation, "
                         "all)") from None


def parse_methods(value: str | Iterable[str] | None, kind: str = MC) -> list[str]:
    """``--methods`` for ``kind``: ``None`` -> its defaults; a comma-separated list of keys and the keywords
    ``default``, ``no-generation`` (every method needing no generated text) and ``all``, in table order.
    A method that does not apply to ``kind`` is refused with one line."""
    keywords = _keywords(kind)
    if value is None:
        return list(keywords["default"])
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    items = [v for v in items if v]
    if not items:
        raise InputError(f"--methods is empty; choose from {', '.join(keywords['all'])} (or {', '.join(keywords)})")
    chosen = set()
    for v in items:
        if v in keywords:
            chosen.update(keywords[v])
            continue
        m = get_method(v)
        m.reads(kind)
        chosen.add(m.key)
    return [k for k in METHODS if k in chosen]


def fittable_methods(kind: str = MC) -> list[str]:
    """Methods ``refcal fit`` can fit from score files of ``kind``: a calibrator reading the plain scores."""
    return [k for k, m in METHODS.items() if m.calibrator is not None and kind in m.inputs
            and m.inputs[kind].chat == "scores" and m.inputs[kind].base in (None, "scores")]


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
