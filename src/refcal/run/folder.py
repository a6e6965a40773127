"""The run folder: the only code that writes ``metrics.json`` and reads it back.

Layout (see ``docs/ARCHITECTURE.md``)::

    config.json              the RunConfig
    metrics.json             the RunResult (schema_version 1)
    calibrator.json          the deployable DACA (absent when it could not be fitted)
    scores/<role>[_t<t>][_<split>].parquet   option logits of both models
    predictions/<method>.parquet             log-probabilities of each method on the plotted questions
    report.html, report.md, plots/           written by the finish hook (`refcal run`: refcal.report)

:func:`write_run_folder` builds the folder aside and renames it into place, so a run is either complete
or absent. :func:`load_result` validates every field it reads and returns the typed :class:`RunResult`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .._io import atomic_write_json, ensure_parent, make_temp_dir, rename_exclusive
from ..errors import InputError
from ..metrics import ConfidenceInterval, SelectiveCurve, TopLabel
from ..options import MAX_BINS
from ..scores import ScoreSet
from .config import RunConfig
from .result import (
    SCHEMA_VERSION,
    Bootstrap,
    DeployedCalibrator,
    Diagnostics,
    FitRecord,
    MetricSummary,
    RunResult,
)

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"


# ---------------------------------------------------------------------------------------------- writing
def result_to_json(result: RunResult) -> dict[str, Any]:
    """The JSON document of ``result`` (non-finite numbers become ``null`` when written)."""
    doc: dict[str, Any] = {
        "schema_version": result.schema_version,
        "refcal_version": result.refcal_version,
        "config": result.config,
        "has_labels": result.has_labels,
        "n_questions": result.n_questions,
        "n_eval": result.n_eval,
        "n_units": result.n_units,
        "protocol": result.protocol,
        "units": result.units,
        "methods": {m: {k: {"values": s.values, "n_undefined": s.n_undefined, "mean": s.mean, "std": s.std}
                        for k, s in rows.items()} for m, rows in result.methods.items()},
        "method_labels": result.method_labels,
        "unavailable": result.unavailable,
        "diagnostics": None if result.diagnostics is None else asdict(result.diagnostics),
        "fits": {m: [r.flat() for r in recs] for m, recs in result.fits.items()},
        "calibrator": _calibrator_json(result.calibrator),
        "fallbacks": result.fallbacks,
    }
    if result.selective:
        doc["selective"] = {m: {k: np.asarray(v).tolist() for k, v in asdict(c).items()}
                            for m, c in result.selective.items()}
    if result.bootstrap is not None:
        b = result.bootstrap
        doc["bootstrap"] = {"n_boot": b.n_boot, "level": b.level, "n": b.n, "methods": {
            m: {k: ci._asdict() for k, ci in d.items()} for m, d in b.methods.items()}}
    if result.timing:
        doc["timing"] = result.timing
    if result.label_budget:
        doc["label_budget"] = result.label_budget
    if result.provenance:
        doc["provenance"] = result.provenance
    if result.api_stats:
        doc["api_stats"] = result.api_stats
    if result.premise:
        doc["premise"] = result.premise
    if result.parse_failures:
        doc["parse_failures"] = result.parse_failures
    if result.freeform:
        doc["freeform"] = result.freeform
    return doc


def _calibrator_json(cal: DeployedCalibrator | None) -> dict[str, Any] | None:
    if cal is None:
        return None
    if cal.error is not None:
        return {"error": cal.error}
    return {"temperature": cal.temperature, "n_agree": cal.n_agree, "agreement_rate": cal.agreement_rate}


def write_run_folder(out_dir: str | os.PathLike, cfg: RunConfig, evaluation: Any,
                     scores: Mapping[tuple[str, int, str | None], ScoreSet], *, overwrite: bool = False,
                     finish: Callable[[Path], Any] | None = None, config: Mapping[str, Any] | None = None) -> Path:
    """Write every file of a run into ``out_dir`` (built aside, then renamed: complete or absent).

    ``evaluation`` is a :class:`refcal.run.evaluate.Evaluation`; ``scores`` maps ``(role, template,
    split)`` to the scored models; ``config`` replaces ``asdict(cfg)`` in ``config.json`` (free-form runs
    add their prompts and judge). ``finish(folder)`` runs on the complete folder before it is renamed into
    place (``refcal run`` passes :func:`refcal.report.write_report`), so what it writes is part of the run.
    """
    out_dir = check_run_dir(out_dir, overwrite=overwrite)
    ensure_parent(out_dir, what="the run folder")
    try:
        tmp = make_temp_dir(f".{out_dir.name}.", out_dir.parent)
    except OSError as exc:
        raise InputError(f"cannot write the run folder {out_dir}: {exc.strerror}; choose a folder you can "
                         "write to (the scores are cached: rerunning is quick)") from exc
    try:
        templates = {t for (_, t, _) in scores}
        splits = {s for (_, _, s) in scores}
        for (role, t, s), sc in scores.items():
            suffix = f"_t{t}" if len(templates) > 1 else ""
            ssuffix = f"_{s}" if len(splits) > 1 else ""
            sc.save(tmp / "scores" / f"{role}{suffix}{ssuffix}.parquet")
        for m, (ids, lp, labels) in evaluation.predictions.items():
            if isinstance(lp, TopLabel):  # an answer and its confidence: [option (-1: none), confidence, 0 ...]
                width = max([2] + [y + 1 for y in labels if y is not None])  # labels stay valid option indices
                rows = [[float(a), float(c)] + [0.0] * (width - 2)
                        for a, c in zip(lp.prediction, lp.confidence, strict=True)]
                meta = {"method": m, "top_label": True}
            else:
                rows = [[None if np.isneginf(v) else float(v) for v in r] for r in lp]
                meta = {"method": m, "log_probabilities": True}
            ScoreSet.from_rows(ids, rows, labels, meta=meta,
                               source=f"predictions/{m}").save(tmp / "predictions" / f"{m}.parquet")
        if evaluation.calibrator is not None:
            evaluation.calibrator.save(tmp / "calibrator.json", inputs=evaluation.calibrator_inputs)
        atomic_write_json(tmp / CONFIG_FILE, {"refcal_version": __version__, **(config or cfg.to_dict())})
        atomic_write_json(tmp / METRICS_FILE, result_to_json(evaluation.result))
        if finish is not None:
            finish(tmp)
        _place(tmp, out_dir, overwrite=overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def check_run_dir(out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Before any slow work: refuse an existing ``out_dir`` (unless ``overwrite``), a file in its place and
    a place that cannot be written (:func:`refcal._io.ensure_parent` with ``create=False``)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir} is a file, not a run folder; choose another -o/--output")
    if out_dir.exists() and not overwrite:
        raise InputError(f"{out_dir} already exists; choose another -o/--output or pass --overwrite")
    ensure_parent(out_dir, what="the run folder", create=False)
    return out_dir


def _place(tmp: Path, out_dir: Path, *, overwrite: bool) -> None:
    """Rename the finished ``tmp`` to ``out_dir``, atomically and exclusively: of two runs finishing onto
    the same name one wins and the other raises :class:`InputError` (its scores stay cached). With
    ``overwrite`` an existing folder is first moved aside (then removed), never deleted in place."""
    for _ in range(5):
        aside = None
        if overwrite and out_dir.exists():
            aside = out_dir.with_name(f".{out_dir.name}.old.{os.getpid()}.{tmp.name[-8:]}")
            try:
                os.rename(out_dir, aside)
            except FileNotFoundError:  # another run moved it first
                aside = None
        try:
            rename_exclusive(tmp, out_dir)
        except FileExistsError:
            if aside is not None:
                shutil.rmtree(aside, ignore_errors=True)
            if overwrite:
                continue  # another --overwrite run placed its folder meanwhile: replace that one
            raise InputError(f"{out_dir} was created by another run while this one was working; nothing was "
                             "overwritten. Rerun with another -o/--output (the scores are cached, so it only "
                             "redoes the fit and the report)") from None
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        return
    raise InputError(f"{out_dir} keeps being replaced by other runs; rerun with another -o/--output") from None


# ---------------------------------------------------------------------------------------------- reading
def _bad(path: Path, what: str) -> InputError:
    return InputError(f"{path}: {what}; re-create the run with `refcal run`")


def read_json_object(path: Path, *, required: bool) -> dict[str, Any] | None:
    """A JSON object from ``path``; ``None`` if it is absent and not ``required``."""
    if not path.exists():
        if required:
            raise InputError(f"{path}: not found; pass a run folder written by `refcal run`")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise InputError(f"{path}: cannot be read as JSON ({e}); re-create the run with `refcal run`") from None
    if not isinstance(data, dict):
        raise _bad(path, "expected a JSON object")
    return data


def load_result(run_dir: str | os.PathLike) -> RunResult:
    """Read and validate ``run_dir/metrics.json``.

    Raises
    ------
    InputError
        ``run_dir`` is not a folder; ``metrics.json`` is missing, not JSON, of another ``schema_version``,
        or a field has the wrong type. The message names the file and the field.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: not a folder; pass the output folder of `refcal run`")
    path = run_dir / METRICS_FILE
    doc = read_json_object(path, required=True)
    assert doc is not None
    return result_from_json(doc, path)


def load_config(run_dir: str | os.PathLike, result: RunResult | None = None) -> dict[str, Any]:
    """``config.json`` of a run folder (else the copy in ``metrics.json``), with ``n_bins`` validated."""
    run_dir = Path(run_dir)
    config = read_json_object(run_dir / CONFIG_FILE, required=False)
    if config is None:
        config = (result or load_result(run_dir)).config
    n_bins = config.get("n_bins")
    if n_bins is not None and not (isinstance(n_bins, int) and not isinstance(n_bins, bool) and 1 <= n_bins <= MAX_BINS):
        raise _bad(run_dir / METRICS_FILE, f"config n_bins must be an integer from 1 to {MAX_BINS}, got {n_bins!r}")
    return config


def _num(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _f(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _obj(doc: Mapping[str, Any], key: str, path: Path, name: str | None = None) -> dict[str, Any]:
    v = doc.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise _bad(path, f"{name or repr(key)} must be a JSON object, got {type(v).__name__}")
    return v


def result_from_json(doc: Mapping[str, Any], path: Path) -> RunResult:
    """Validate a ``metrics.json`` document and build its :class:`RunResult` (missing optional parts stay
    empty, so a partial document still yields a report)."""
    version = doc.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise _bad(path, f"schema_version {version!r} is not the version this build of refcal reads "
                         f"({SCHEMA_VERSION})")
    for key in ("methods", "fits", "diagnostics", "method_labels", "config", "unavailable", "fallbacks",
                "selective", "bootstrap", "calibrator", "timing", "api_stats", "premise", "parse_failures", "freeform", "label_budget",
                "provenance"):
        _obj(doc, key, path)

    methods: dict[str, dict[str, MetricSummary]] = {}
    for m, entry in _obj(doc, "methods", path).items():
        if not isinstance(entry, dict):
            raise _bad(path, f"methods[{m!r}] must be an object of metrics, got {type(entry).__name__}")
        rows = methods[str(m)] = {}
        for name, v in entry.items():
            rows[str(name)] = _metric(v, f"methods[{m!r}][{name!r}]", path)

    fits: dict[str, list[FitRecord]] = {}
    known = {f.name for f in fields(FitRecord)}
    for m, recs in _obj(doc, "fits", path).items():
        if not isinstance(recs, list) or not all(isinstance(r, dict) for r in recs):
            raise _bad(path, f"fits[{m!r}] must be a list of objects")
        fits[str(m)] = [_fit(r, f"fits[{m!r}][{i}]", path, known) for i, r in enumerate(recs)]

    diag = _obj(doc, "diagnostics", path)
    for sub in ("agree", "disagree"):
        if diag.get(sub) is not None and (not isinstance(diag[sub], dict) or not all(map(_num, diag[sub].values()))):
            raise _bad(path, f"diagnostics[{sub!r}] must be a JSON object of numbers")
    for key in ("n", "n_agree", "agreement_rate"):
        if not _num(diag.get(key)):
            raise _bad(path, f"diagnostics[{key!r}] must be a number")
    diagnostics = Diagnostics(n=diag.get("n"), n_agree=diag.get("n_agree"),  # type: ignore[arg-type]
                              agreement_rate=diag.get("agreement_rate"),  # type: ignore[arg-type]
                              agree=diag.get("agree") or {}, disagree=diag.get("disagree") or {}) if diag else None

    cal = _obj(doc, "calibrator", path)
    calibrator = None
    if cal:
        if cal.get("error") is not None and not isinstance(cal["error"], str):
            raise _bad(path, "calibrator['error'] must be a string")
        if not all(_num(cal.get(k)) for k in ("temperature", "n_agree", "agreement_rate")):
            raise _bad(path, "calibrator temperature, n_agree and agreement_rate must be numbers")
        calibrator = DeployedCalibrator(temperature=cal.get("temperature"), n_agree=cal.get("n_agree"),
                                        agreement_rate=cal.get("agreement_rate"), error=cal.get("error"))

    return RunResult(
        schema_version=SCHEMA_VERSION,
        refcal_version=str(doc.get("refcal_version", "?")),
        config=_obj(doc, "config", path),
        has_labels=bool(doc.get("has_labels")),
        n_questions=_count(doc, "n_questions", path),
        n_eval=_count(doc, "n_eval", path),
        n_units=_count(doc, "n_units", path),
        protocol=_text(doc.get("protocol"), "protocol", path),
        units=_units(doc.get("units"), path),
        methods=methods,
        method_labels=_strings(_obj(doc, "method_labels", path), "method_labels", path),
        unavailable=_strings(_obj(doc, "unavailable", path), "unavailable", path),
        diagnostics=diagnostics,
        fits=fits,
        calibrator=calibrator,
        fallbacks=_typed_values(_obj(doc, "fallbacks", path), "fallbacks", path,
                                lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
        selective=_selective(_obj(doc, "selective", path), path),
        bootstrap=_bootstrap(_obj(doc, "bootstrap", path), path),
        timing=_typed_values(_obj(doc, "timing", path), "timing", path, _num),
        api_stats=_typed_values(_obj(doc, "api_stats", path), "api_stats", path, lambda v: isinstance(v, dict)),
        premise=_obj(doc, "premise", path),
        parse_failures=_typed_values(_obj(doc, "parse_failures", path), "parse_failures", path,
                                     lambda v: isinstance(v, dict) and all(isinstance(x, int) for x in v.values())),
        freeform=_obj(doc, "freeform", path),
        label_budget=_obj(doc, "label_budget", path),
        provenance=_obj(doc, "provenance", path),
    )


def _units(v: Any, path: Path) -> list[dict[str, Any]]:
    if v is None:
        return []
    ok = isinstance(v, list) and all(
        isinstance(u, dict) and isinstance(u.get("group"), str)
        and (u.get("template") is None or (isinstance(u["template"], int) and not isinstance(u["template"], bool)))
        for u in v)
    if not ok:
        raise _bad(path, "units must be a list of {\"template\": int, \"group\": string} objects")
    return [{"template": u.get("template"), "group": u["group"]} for u in v]


def _metric(v: Any, where: str, path: Path) -> MetricSummary:
    if isinstance(v, dict):
        vals = v.get("values") or []
        if not (_num(v.get("mean")) and _num(v.get("std")) and isinstance(vals, list) and all(map(_num, vals))
                and isinstance(v.get("n_undefined", 0), int)):
            raise _bad(path, f"{where} must be a number or {{\"mean\", \"std\"}} numbers")
        return MetricSummary(_f(v.get("mean")), _f(v.get("std")), [_f(x) for x in vals], int(v.get("n_undefined", 0)))
    if _num(v):
        return MetricSummary(_f(v), float("nan"), [_f(v)])
    raise _bad(path, f"{where} must be a number or {{\"mean\", \"std\"}} numbers")


def _fit(rec: dict[str, Any], where: str, path: Path, known: set[str]) -> FitRecord:
    """A flat fit record: the fixed keys checked by type, every other key a fitted parameter (a number,
    a string or a boolean)."""
    out = FitRecord(group=str(rec.get("group", "")))
    for key, v in rec.items():
        if key == "group" or v is None:
            continue
        if key in known:
            ok = (isinstance(v, str) if key in ("error", "fallback") else isinstance(v, bool) if key == "converged"
                  else _num(v))
        else:
            ok = isinstance(v, str | bool) or _num(v)
        if not ok or key == "params":
            raise _bad(path, f"{where}[{key!r}] has the wrong type ({type(v).__name__})")
        if key in known:
            setattr(out, key, v)
        else:
            out.params[key] = v
    return out


def _count(doc: Mapping[str, Any], key: str, path: Path) -> int | None:
    v = doc.get(key)
    if v is None or v == "n/a":
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise _bad(path, f"{key!r} must be a non-negative integer, got {v!r}")
    return v


def _text(v: Any, key: str, path: Path) -> str:
    if v is None:
        return ""
    if not isinstance(v, str):
        raise _bad(path, f"{key!r} must be a string")
    return v


def _strings(d: dict[str, Any], key: str, path: Path) -> dict[str, str]:
    return _typed_values(d, key, path, lambda v: isinstance(v, str))


def _typed_values(d: dict[str, Any], key: str, path: Path, ok: Callable[[Any], bool]) -> dict[str, Any]:
    for k, v in d.items():
        if not ok(v):
            raise _bad(path, f"{key}[{k!r}] has the wrong type ({type(v).__name__})")
    return {str(k): v for k, v in d.items()}


def _selective(d: dict[str, Any], path: Path) -> dict[str, SelectiveCurve]:
    out = {}
    for m, c in d.items():
        keys = ("thresholds", "accuracy", "coverage", "n_selected")
        if not isinstance(c, dict) or not all(isinstance(c.get(k), list) and all(map(_num, c[k])) for k in keys) \
                or len({len(c[k]) for k in keys}) != 1:
            raise _bad(path, f"selective[{m!r}] must hold equally long lists {', '.join(keys)}")
        out[str(m)] = SelectiveCurve(*(np.array([_f(x) for x in c[k]]) for k in keys[:3]),
                                     np.array([0 if x is None else int(x) for x in c["n_selected"]], dtype=np.int64))
    return out


def _bootstrap(d: dict[str, Any], path: Path) -> Bootstrap | None:
    if not d:
        return None
    level = d.get("level", 0.95)
    if not (_num(level) and _num(d.get("n_boot")) and _num(d.get("n"))) or not isinstance(d.get("methods", {}), dict):
        raise _bad(path, "bootstrap must hold numbers n_boot, level, n and an object methods")
    methods: dict[str, dict[str, ConfidenceInterval]] = {}
    for m, per in (d.get("methods") or {}).items():
        if not isinstance(per, dict):
            raise _bad(path, f"bootstrap methods[{m!r}] must be a JSON object")
        methods[str(m)] = {}
        for k, ci in per.items():
            if not isinstance(ci, dict) or not all(_num(ci.get(x)) for x in ("estimate", "low", "high")):
                raise _bad(path, f"bootstrap methods[{m!r}][{k!r}] must hold numbers estimate, low, high")
            methods[str(m)][str(k)] = ConfidenceInterval(_f(ci.get("estimate")), _f(ci.get("low")), _f(ci.get("high")))
    n_boot, n = d.get("n_boot"), d.get("n")
    return Bootstrap(n_boot=0 if n_boot is None else int(n_boot), level=_f(level), n=0 if n is None else int(n),
                     methods=methods)


__all__ = ["METRICS_FILE", "CONFIG_FILE", "result_to_json", "result_from_json", "write_run_folder", "load_result",
           "load_config", "read_json_object", "check_run_dir"]
