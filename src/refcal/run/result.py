"""The typed result of a run: what ``metrics.json`` holds, as dataclasses.

:mod:`refcal.run.evaluate` builds a :class:`RunResult`; :mod:`refcal.run.folder` is the only code that
writes it to ``metrics.json`` and reads it back (validated); the report, the console table and the
command line read these objects, never the raw JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..calibrate.methods import method_label
from ..metrics import ConfidenceInterval, SelectiveCurve

#: Version of the ``metrics.json`` layout written by this build (``schema_version`` in the file).
SCHEMA_VERSION = 1


@dataclass
class MetricSummary:
    """One metric of one method over the evaluation units (splits / subjects / templates).

    ``values`` has one entry per unit (NaN where undefined, e.g. AUROC when every answer of a unit is
    right); ``mean`` and ``std`` leave the NaN values out (``n_undefined`` counts them); ``std`` is NaN
    with fewer than two values or when a value is infinite.
    """

    mean: float
    std: float
    values: list[float] = field(default_factory=list)
    n_undefined: int = 0


@dataclass
class FitRecord:
    """One fit of one method on one unit (``group``: the subject or split; ``template``: its template).

    ``params`` is the calibrator's :meth:`~refcal.calibrate.Calibrator.fitted_params` (temperatures,
    agreement counts, bounds hit: whatever the method fits); ``error`` and ``fallback`` are set when the
    fit was impossible and the unit was evaluated with the chat model unchanged. In ``metrics.json`` a
    record is one flat object (:meth:`flat`): the params beside the fixed keys.
    """

    group: str
    template: int | None = None
    n_iter: int | None = None
    converged: bool | None = None
    params: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    fallback: str | None = None

    def flat(self) -> dict[str, Any]:
        """The record as written to ``metrics.json``: fixed keys and params side by side, ``None`` left out."""
        out = {"group": self.group, "template": self.template, "n_iter": self.n_iter, "converged": self.converged,
               **self.params, "error": self.error, "fallback": self.fallback}
        return {k: v for k, v in out.items() if v is not None}

    def __getattr__(self, name: str) -> Any:
        """A fitted parameter read as an attribute (``rec.temperature``); ``None`` when this fit has none."""
        if name.startswith("_") or name == "params":
            raise AttributeError(name)
        return self.__dict__.get("params", {}).get(name)

    def get(self, key: str, default: Any = None) -> Any:
        """A fixed field or a fitted parameter by name (``rec.get("temperature")``)."""
        return self.flat().get(key, default)


@dataclass
class Diagnostics:
    """Agreement of the two models on the calibration questions (see
    :func:`refcal.calibrate.agreement_diagnostics`); ``agree`` / ``disagree`` hold ``n`` and the
    per-model accuracy (with labels) and confidence of each subset (``None`` for an empty subset)."""

    n: int
    n_agree: int
    agreement_rate: float
    agree: dict[str, float | None] = field(default_factory=dict)
    disagree: dict[str, float | None] = field(default_factory=dict)


@dataclass
class DeployedCalibrator:
    """The deployable DACA fitted on every calibration question (``calibrator.json``), or why there is none."""

    temperature: float | None = None
    n_agree: int | None = None
    agreement_rate: float | None = None
    error: str | None = None


@dataclass
class Bootstrap:
    """Percentile-bootstrap intervals (``level``, ``n_boot`` resamples of the ``n`` plotted questions):
    ``methods[method][metric]`` for metric in ``ece``, ``brier``, ``nll``."""

    n_boot: int
    level: float
    n: int
    methods: dict[str, dict[str, ConfidenceInterval]] = field(default_factory=dict)


@dataclass
class RunResult:
    """Everything ``metrics.json`` holds.

    ``methods`` has the methods that were evaluated; ``unavailable`` those that were asked for but cannot
    apply to this run, with the reason (e.g. a labelled oracle on unlabelled data); ``selective`` and
    ``bootstrap`` are computed on the plotted questions (first template, first split / every subject) and
    only with labels.
    """

    schema_version: int = SCHEMA_VERSION
    refcal_version: str = "?"
    config: dict[str, Any] = field(default_factory=dict)
    has_labels: bool = False
    n_questions: int | None = None
    n_eval: int | None = None
    n_units: int | None = None
    protocol: str = ""
    #: the evaluation units in the order of every ``MetricSummary.values``: ``{"template": t, "group": g}``
    #: (group: the subject or ``split<i>``); empty in a metrics.json written before it was recorded
    units: list[dict[str, Any]] = field(default_factory=list)
    methods: dict[str, dict[str, MetricSummary]] = field(default_factory=dict)
    method_labels: dict[str, str] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    diagnostics: Diagnostics | None = None
    fits: dict[str, list[FitRecord]] = field(default_factory=dict)
    calibrator: DeployedCalibrator | None = None
    fallbacks: dict[str, int] = field(default_factory=dict)
    selective: dict[str, SelectiveCurve] = field(default_factory=dict)
    bootstrap: Bootstrap | None = None
    timing: dict[str, float] = field(default_factory=dict)
    api_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: with labels: is the base model calibrated where the models agree (run.evaluate.premise_diagnostics)
    premise: dict[str, Any] = field(default_factory=dict)
    #: generation methods: replies that did not parse, by reason (tasks.elicit.parse_failures)
    parse_failures: dict[str, dict[str, int]] = field(default_factory=dict)
    #: free-form runs only (refcal.run.freeform): judge, prompts, parse failures, example answers
    freeform: dict[str, Any] = field(default_factory=dict)
    #: ``--labels-budget``: the label-efficiency curve (refcal.run.budget.label_budget)
    label_budget: dict[str, Any] = field(default_factory=dict)
    #: the code commit and library versions that made the run (refcal.run.provenance.provenance)
    provenance: dict[str, Any] = field(default_factory=dict)

    def label(self, method: str) -> str:
        """The method's label in this run (its own, else the registry's, else the key)."""
        return method_label(method, self.method_labels)


__all__ = ["SCHEMA_VERSION", "MetricSummary", "FitRecord", "Diagnostics", "DeployedCalibrator", "Bootstrap",
           "RunResult"]
