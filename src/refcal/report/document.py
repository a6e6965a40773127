"""The report as a list of blocks (:mod:`refcal.report.blocks`): headings, paragraphs, notes, tables and
figures, every number read from the run's ``metrics.json``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import numpy as np

from ..calibrate.methods import METHODS, ordered_keys
from ..metrics import columns
from ..run.evaluate import CONFORMAL_ALPHA
from ..run.result import Bootstrap, Diagnostics, FitRecord, MetricSummary, RunResult
from .blocks import Image, Table

#: (key, header, scale, decimals, lower is better): the ``report`` view of :data:`refcal.metrics.COLUMNS`
_COLUMNS = [(c.key, c.header, c.scale, c.decimals, c.lower_is_better) for c in columns("report")]
#: the second table: smooth / classwise / debiased ECE, the Brier decomposition, conformal sets
_MORE_COLUMNS = [(c.key, c.header, c.scale, c.decimals, c.lower_is_better) for c in columns("report_more")]
_LABEL_METRICS = ("ECE, MCE, AECE, Brier score, NLL, accuracy, AUROC, AURC, smooth / classwise / debiased ECE, "
                  "the Brier decomposition, conformal sets, reliability diagrams and selective accuracy / "
                  "risk–coverage curves")


def _fmt(v: Any, scale: float = 1, nd: int = 4) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v) * scale:.{nd}f}"
    return str(v)


def _comparison(result: RunResult, names: Mapping[str, str], table: list | None = None) -> Table:
    """Methods × metrics, mean ± std over templates/splits; best mean per column in bold (base excluded).
    A method that could not apply to the run is listed with its reason."""
    methods, has_labels = result.methods, result.has_labels
    order = ordered_keys(methods)
    if has_labels:
        cols = [c for c in (table or _COLUMNS) if any(c[0] in methods[m] for m in order)]
    else:
        keys = sorted({k for m in order for k in methods[m]})
        cols = [(k, k.replace("_", " "), 1, 4, True) for k in keys]
    rows, bold, means = [], set(), {}
    for r, m in enumerate(order):
        row = [names.get(m, m)]
        for c, (key, _, scale, nd, _) in enumerate(cols, 1):
            e: MetricSummary | None = methods[m].get(key)
            mean = None if e is None or np.isnan(e.mean) else e.mean
            cell = _fmt(mean, scale, nd)
            if e is not None and mean is not None and len(e.values) > 1 and np.isfinite(mean):
                cell += f" ± {_fmt(e.std, scale, nd)}"
            row.append(cell)
            if mean is not None and np.isfinite(mean):
                means[(r, c)] = round(mean * scale, nd)  # compare what is shown: ties in print tie here
        rows.append(row)
    if has_labels:
        for c, (_, _, _, _, lower) in enumerate(cols, 1):
            cand = {r: v for (r, cc), v in means.items() if cc == c and order[r] != "base"}
            if cand and lower is not None:  # None: a property of the data, not a score (no best)
                best = min(cand.values()) if lower else max(cand.values())
                bold |= {(r, c) for r, v in cand.items() if v == best}
    for m in ordered_keys(set(result.unavailable) - set(methods)):
        rows.append([names.get(m, m)] + [f"not applicable: {result.unavailable[m]}"] + [""] * (len(cols) - 1))
    return Table(["method"] + [c[1] for c in cols], rows, bold)


def _kv_table(d: Mapping[str, Any], collapsed: str | None = None) -> Table:
    rows = []
    flat: dict[str, Any] = {}
    for k, v in d.items():  # one level of nesting becomes "outer.inner" keys
        if isinstance(v, Mapping) and v and all(not isinstance(x, (dict, list)) for x in v.values()):
            flat.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            flat[str(k)] = v
    for k, v in flat.items():
        if isinstance(v, (dict, list)):
            v = json.dumps(v, default=str)
            v = v if len(v) <= 160 else v[:157] + "..."
        rows.append([str(k), _fmt(v, 1, 6)])
    return Table(["key", "value"], rows, collapsed=collapsed)


# ---------------------------------------------------------------------------------------------- document
def document(res: RunResult, config: Mapping[str, Any], cal: Mapping[str, Any] | None,
              preds: Mapping[str, Any], images: list[Image], names: Mapping[str, str]) -> list[Any]:
    has_labels = res.has_labels
    img = {i.stem: i for i in images}
    out: list[Any] = [("h1", "refcal calibration report")]
    ds, chat, base = config.get("dataset"), config.get("chat"), config.get("base")
    summary = [f"chat model: {chat}" if chat else None, f"base model: {base}" if base else None,
               f"data set: {ds}" if ds else None, f"questions: {_fmt(res.n_questions)}",
               f"evaluated: {_fmt(res.n_eval)}", f"protocol: {res.protocol or 'n/a'}",
               _wall(res.timing), f"refcal {res.refcal_version}"]
    out.append(("p", " · ".join(s for s in summary if s)))
    if not has_labels:
        out.append(("note", "This run has no labels. The metrics that need labels — " + _LABEL_METRICS + " — "
                    "cannot be computed and are not shown. What is shown needs no labels: the fitted "
                    "calibrator, the agreement diagnostics and the confidence distributions."))

    out.append(("h2", "Comparison of methods"))
    if res.methods or res.unavailable:
        out.append(_comparison(res, names))
        out.append(("p", ("Mean ± standard deviation over prompt templates / splits / subjects "
                          f"({_fmt(res.n_units)} units). ECE, MCE and AECE in percent; bold marks the best "
                          "value among the chat-model calibrations (the base model is another model and is not "
                          "ranked). The oracle uses labels; DACA and naive alignment do not.")
                   if has_labels else "Label-free quantities only (mean over units)."))
        if has_labels and res.methods:
            out.append(("p", "table.md and table.json give the DACA paper's Table 1 layout (ECE, MCE, AECE, "
                        f"Brier): {_paper_spread_text(res)}."))
        more = _comparison(res, names, _MORE_COLUMNS) if has_labels and res.methods else None
        if more is not None and len(more.header) > 1:
            out.append(("h2", "More calibration metrics"))
            out.append(more)
            out.append(("p", "smECE: smooth ECE (Błasiok & Nakkiran; kernel-smoothed, no bins); cwECE: classwise "
                        "ECE (every option's probability, Kull et al.); dECE: debiased l2 ECE on equal-mass bins "
                        "(Kumar et al.); Brier REL − RES + UNC: the Brier score's reliability, resolution and "
                        "uncertainty over the ECE's bins (plus two within-bin terms: docs/METHODS.md); LAC / APS: "
                        f"split-conformal {100 * (1 - CONFORMAL_ALPHA):.0f} % prediction sets on half of each "
                        "unit's test questions, calibrated on the other half: coverage (should be about "
                        f"{100 * (1 - CONFORMAL_ALPHA):.0f} %) and mean set size (smaller is better)."))
    else:
        out.append(("p", "metrics.json holds no per-method results."))

    if res.freeform:
        out += _freeform_section(res.freeform, names)

    if res.parse_failures:
        out += _parse_failure_notes(res.parse_failures, names)
    top = [names.get(m, m) for m in ordered_keys(res.methods) if m in METHODS and METHODS[m].top_label]
    if top:
        out.append(("p", f"{', '.join(top)}: an answer with one confidence and no distribution over the options, "
                    "so their NLL and multiclass Brier score are undefined (n/a); every other column is exact."))
    if has_labels and res.bootstrap is not None:
        out += _bootstrap_section(res.bootstrap, names)
        if "ece_intervals" in img:
            out.append(img["ece_intervals"])
    if res.label_budget.get("methods"):
        out += _label_budget_section(res.label_budget, names)
        if "label_budget" in img:
            out.append(img["label_budget"])

    out.append(("h2", "Confidence distributions"))
    out.append(img["confidence_histogram"] if "confidence_histogram" in img
               else ("p", "No predictions/ folder: confidence plots are not available."))
    if has_labels:
        out.append(("h2", "Reliability diagrams"))
        out.append(img["reliability"] if "reliability" in img else ("p", "No predictions to draw from."))
        out.append(("h2", "Selective classification"))
        if "selective" in img:
            out.append(img["selective"])
    if preds:
        out.append(("p", "Plots use the evaluation questions of the first split and template "
                    f"({len(next(iter(preds.values()))[0])} questions); the table averages over all units."))
    out.append(("h2", "Agreement diagnostics: can the label-free fit be trusted?"))
    out += _premise_lines(res.premise)
    out += _diagnostics(res.diagnostics, res.fits, has_labels)
    if "temperatures" in img:
        out.append(img["temperatures"])

    if res.api_stats:
        out += _api_section(res.api_stats)

    out.append(("h2", "Fitted calibrator (calibrator.json)"))
    if cal:
        # the temperature is shown at top level already; vector/matrix parameters are shown as lists
        drop = ("hyperparameters", "inputs") + (("parameters",) if "temperature" in cal else ())
        out.append(_kv_table({k: v for k, v in cal.items() if k not in drop}))
        if cal.get("inputs"):
            out.append(_kv_table(cal["inputs"], collapsed="inputs the calibrator was fitted on"))
    else:
        why = res.calibrator.error if res.calibrator is not None else None
        out.append(("note", f"No deployable calibrator: {why}") if why
                   else ("p", "No calibrator.json in this run folder."))
    fallbacks = {m: n for m, n in res.fallbacks.items() if n}
    if fallbacks:
        out.append(("note", "Some units could not be fitted and were evaluated uncalibrated (temperature 1): "
                    + ", ".join(f"{names.get(m, m)}: {n}" for m, n in fallbacks.items())
                    + ". The reason of each is in metrics.json under fits."))

    out.append(("h2", "Configuration"))
    out.append(_kv_table(config or {}, collapsed="resolved configuration (config.json)"))
    return out


def _wall(timing: Mapping[str, Any]) -> str | None:
    """``wall time 12.3 s (scoring 10.1 s)`` when the run recorded it."""
    wall = timing.get("wall_seconds")
    if wall is None:
        return None
    scoring = timing.get("scoring_seconds")
    return f"wall time {_fmt(wall, 1, 1)} s" + (f" (scoring {_fmt(scoring, 1, 1)} s)" if scoring is not None else "")


def _paper_spread_text(res: RunResult) -> str:
    """What the Table 1 layout's mean ± std are taken over (:func:`refcal.run.table.paper_spread`)."""
    templates = {u["template"] for u in res.units}
    if len(templates) > 1:
        return (f"mean ± std over the {len(templates)} prompt templates of each template's average over its "
                "units (one calibrator per subject or split)")
    return "mean ± std over the units, as above"


def _short(text: Any, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _freeform_section(ff: Mapping[str, Any], names: Mapping[str, str]) -> list[Any]:
    """Free-form runs: what was judged and how, parse failures, and example answers with every method's
    confidence (texts come from the data set and the model: escaped by the renderers like every cell)."""
    out: list[Any] = [("h2", "Free-form answers")]
    acc, judge = ff.get("accuracy"), ff.get("judge") or {}
    out.append(("p", f"The chat model answered {_fmt(ff.get('n_questions'))} questions greedily "
                f"({_fmt(ff.get('n_empty_answers'))} empty answers); "
                + (f"{_fmt(acc, 100, 1)} % were judged correct by {judge.get('kind', 'the judge')}"
                   + (" with containment" if judge.get("containment") else "") + " (evaluation only). "
                   if acc is not None else "no references, so nothing was judged. ")
                + "Each method's confidence c that the answer is correct is evaluated against the verdicts: "
                "ECE and the reliability diagrams bin c against the share of correct answers, Brier is the "
                "mean of (c − correct)², NLL the binary log loss, AUROC ranks correct above wrong answers by "
                "c, and Acc is the answers' own accuracy (verbal: of its own guess). The agreement "
                "diagnostics compare the two models' P(True) verdicts on the same answer."))
    for key, info in (ff.get("methods") or {}).items():
        pf = info.get("parse_failures") if isinstance(info, Mapping) else None
        if isinstance(pf, Mapping) and pf.get("n"):
            reasons = ", ".join(f"{k}: {v}" for k, v in pf.items() if k not in ("n", "n_failed", "n_clipped"))
            out.append(("note", f"{names.get(key, key)}: {_fmt(pf.get('n_failed'))} of {_fmt(pf.get('n'))} replies "
                        f"could not be parsed{' (' + reasons + ')' if reasons else ''}; they count as wrong "
                        f"answers with confidence {_fmt(info.get('failure_confidence'), 1, 2)}."))
    examples = ff.get("examples") or []
    if examples:
        keys = list(dict.fromkeys(k for ex in examples for k in (ex.get("confidence") or {})))
        rows = [[_short(ex.get("question", ""), 80), _short(ex.get("answer", ""), 50) or "(empty)",
                 _short("; ".join(map(str, ex.get("references") or [])), 50),
                 {1: "yes", 0: "no"}.get(ex.get("correct"), "n/a")]
                + [_fmt((ex.get("confidence") or {}).get(k), 1, 3) for k in keys] for ex in examples]
        out.append(Table(["question", "answer", "references", "correct"] + [names.get(k, k) for k in keys], rows,
                          collapsed=f"the first {len(rows)} questions: answer, verdict and each method's confidence"))
    return out


def _parse_failure_notes(failures: Mapping[str, Mapping[str, int]], names: Mapping[str, str]) -> list[Any]:
    """Generation methods: replies that did not parse, counted (never dropped) by reason."""
    out: list[Any] = []
    for m, f in failures.items():
        reasons = ", ".join(f"{k}: {v}" for k, v in f.items() if k not in ("n", "n_failed", "n_member_failures"))
        members = (f"; {f['n_member_failures']} ensemble member replies failed in all"
                   if "n_member_failures" in f else "")
        out.append(("note", f"{names.get(m, m)}: {f.get('n_failed', 0)} of {f.get('n', 0)} replies could not be "
                    f"used{' (' + reasons + ')' if reasons else ''}{members}. Each counts as a wrong answer with "
                    "confidence 1/k (k options)."))
    return out


def _premise_lines(premise: Mapping[str, Any]) -> list[Any]:
    """The premise of DACA and ReEval in one line per model (with labels only)."""
    verdict = premise.get("verdict") if isinstance(premise, Mapping) else None
    if not isinstance(verdict, Mapping) or not verdict:
        return []
    lines = "; ".join(f"{v}" for v in verdict.values())
    return [("note", f"Premise check on the {premise.get('n_agree', 'n/a')} agreeing calibration questions: "
             f"{lines}.")]


def _bootstrap_section(boot: Bootstrap, names: Mapping[str, str]) -> list[Any]:
    """Sampling uncertainty of the headline metrics on the plotted questions."""
    keys = {k for d in boot.methods.values() for k in d}
    cols = [c for c in columns("report") + columns("report_more") if c.key in keys]  # in table order
    rows = []
    for m in ordered_keys(boot.methods):
        cells = [names.get(m, m)]
        for c in cols:
            ci = boot.methods[m].get(c.key)
            cells.append(f"{_fmt(ci.estimate, c.scale, 3)} [{_fmt(ci.low, c.scale, 3)}, {_fmt(ci.high, c.scale, 3)}]"
                         if ci is not None else "n/a")
        rows.append(cells)
    return [
        Table(["method", *(f"{c.header} [95 % CI]" for c in cols)], rows,
              collapsed=f"{100 * boot.level:.0f} % bootstrap intervals ({boot.n_boot} resamples of "
                        f"the {boot.n} plotted questions)"),
    ]


def _label_budget_section(lb: Mapping[str, Any], names: Mapping[str, str]) -> list[Any]:
    """How many labels each labelled method needs (``--labels-budget``): mean ECE % per k."""
    ks = [str(k) for k in lb["ks"]]
    rows = [[names.get(m, m), *(_fmt(v, 100, 2) for v in r["metrics"]["ece"]["mean"])]
            for m, r in lb["methods"].items()]
    daca = lb.get("daca", {}).get("ece")
    if daca:
        rows.append([f"{names.get('daca', 'DACA')} (no labels)", *([_fmt(daca["mean"], 100, 2)] * len(ks))])
    sentence = lb.get("worth_labels", {}).get("sentence", "")
    return [("h2", "How many labels is DACA worth?"),
            ("p", f"{sentence}. Each labelled method fitted on k labelled calibration questions ({lb['n_draws']} "
                  f"random draws per k, {lb['n_units']} units), evaluated on the test questions: mean ECE %."),
            Table(["method", *(f"k = {k}" for k in ks)], rows)]


def _api_section(stats: Mapping[str, Any]) -> list[Any]:
    """Where each API model's option-letter scores came from, and how many letters got the floor."""
    keys = [("n_requests", "requests"), ("n_letters", "option letters"),
            ("n_floored_letters", "letters floored"), ("n_requests_with_floor", "requests with a floor"),
            ("n_no_token", "no first token"), ("n_retries", "retries")]
    rows, lines, floored_any = [], [], False
    for role, st in stats.items():
        if not isinstance(st, Mapping):
            continue
        source, kind, text = _letter_source(str(role), st)
        floored_any |= bool(st.get("n_floored_letters"))
        lines.append((kind, text))
        n_letters = st.get("n_letters") or 0
        share = f" ({100 * st.get('n_floored_letters', 0) / n_letters:.1f}%)" if n_letters else ""
        rows.append([str(role), source] + [_fmt(st.get(k), 1, 0) + (share if k == "n_floored_letters" else "")
                                           for k, _ in keys])
    out: list[Any] = [("h2", "API scoring: where the letter scores came from"),
                      Table(["model", "letter scores"] + [label for _, label in keys], rows), *lines]
    if floored_any:
        out.append(("p", "Top-k: the server returns only the top-k log-probabilities of the generated token. An "
                    "option letter absent from the top-k gets a floor below the smallest returned "
                    "log-probability: log(min(p_min, max(1 - Σp, 1e-6))) - log 2, i.e. at most half of the "
                    "probability mass the top-k leaves for it."))
    out.append(("p", "Letter and floor counts cover every scored question, answers served from the score cache "
                "included; requests and retries count what this run sent."))
    return out


def _letter_source(role: str, st: Mapping[str, Any]) -> tuple[str, str, str]:
    """``(table cell, block kind, sentence)``: how one API model's letters were scored (``letter_source``:
    ``exact``, ``topk``, ``unresolved`` when every answer came from the cache, ``exact+topk`` when Ray
    workers differed; absent in runs older than exact scoring, which had the top-k only)."""
    n_letters, n_floored = int(st.get("n_letters") or 0), int(st.get("n_floored_letters") or 0)
    floored = (f"{n_floored} of {n_letters} option letters ({100 * n_floored / max(n_letters, 1):.1f} %) got the "
               f"floor, on {_fmt(st.get('n_requests_with_floor'))} questions")
    sources = set(str(st.get("letter_source", "topk")).split("+")) - {"unresolved", ""}
    note = st.get("letters_note")
    fallback = (f" letters=auto asked the server for exact letter scores and fell back to the top-k: {note}."
                if note else "")
    if not n_letters:
        return "none", "p", f"{role}: no option letters were scored (cloze or generated answers only)."
    if sources == {"exact"}:
        text = (f"{role}: exact log-probabilities of the fixed letter tokens (vLLM's logprob_token_ids; the "
                "probabilities of each letter's single-token spellings added), so no letter needed a floor.")
        if n_floored:
            text += (f" Yet {floored}: those answers came from the score cache, scored with the top-k by an "
                     "earlier run with letters=auto.")
        return "exact", "note" if n_floored else "p", text
    if sources == {"topk"}:
        return ("top-k + floor", "note" if note else "p",
                f"{role}: the top-k log-probabilities of the first generated token, each option letter absent "
                f"from them floored (rule below): {floored}.{fallback}")
    if sources == {"exact", "topk"}:
        return ("exact + top-k", "note",
                f"{role}: some Ray workers got exact letter scores and others the top-k with the floor: "
                f"{floored}.{fallback}")
    if sources:  # a value this report does not know: shown as it is
        return str(st.get("letter_source")), "p", f"{role}: letter scores from {st.get('letter_source')}: {floored}."
    return ("from the cache", "p",
            f"{role}: every answer came from the score cache, so this run did not see how the server scores "
            "letters; " + (f"{floored}, so at least those were scored with the top-k and the floor."
                           if n_floored else f"none of its {n_letters} option letters got the floor."))


def _diagnostics(d: Diagnostics | None, fits: Mapping[str, list[FitRecord]], has_labels: bool) -> list[Any]:
    if d is None:
        return [("p", "metrics.json holds no agreement diagnostics.")]
    out: list[Any] = [("p", f"The two models pick the same answer on {_fmt(d.n_agree)} of "
                       f"{_fmt(d.n)} questions (agreement rate {_fmt(d.agreement_rate, 1, 3)}). DACA fits only on "
                       "these agreeing questions.")]
    n_agree = d.n_agree
    if isinstance(n_agree, (int, float)) and n_agree < 30:
        out.append(("note", f"Only {n_agree} agreeing questions: the fitted calibrator is noisy; score more "
                    "questions before trusting it."))
    keys = ["n"] + [f"{m}_{s}" for m in ("chat", "base") for s in (("accuracy", "confidence") if has_labels
                                                                    else ("confidence",))]
    rows = [[name] + [_fmt(sub.get(k), 1, 4) for k in keys] for name, sub in (("agree", d.agree),
                                                                               ("disagree", d.disagree))]
    out.append(Table(["subset"] + [k.replace("_", " ") for k in keys], rows))
    if has_labels:
        out.append(("p", "A trustworthy fit shows the base model's confidence close to its accuracy on the "
                    "agreeing questions, and the chat model over-confident there."))
    for m, fit_recs in fits.items():
        if not fit_recs:
            continue
        recs = [{k: v for k, v in asdict(r).items() if v is not None} for r in fit_recs]
        cols = [c for c in ("template", "group", "temperature", "n_agree", "agreement_rate", "n", "n_iter",
                            "converged") if any(c in r for r in recs)]
        counts = ("n_agree", "n", "n_iter")  # may arrive as floats (199.0): shown as integers
        rows = [[_fmt(int(r[c]) if c in counts and isinstance(r.get(c), float) and float(r[c]).is_integer()
                      else r.get(c), 1, 4) for c in cols] for r in recs]
        used = [r.get("n_agree", r.get("n")) for r in recs]
        used = [u for u in used if isinstance(u, (int, float))]
        summary = f"fits of {m}: {len(recs)}" + (f", questions used {int(min(used))}–{int(max(used))}" if used else "")
        out.append(Table([c.replace("_", " ") for c in cols], rows, collapsed=summary))
    return out


