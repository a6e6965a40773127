"""The summary page of ``scripts/serve_shift_demo.py``: ``README.md`` in its output folder.

Run alone to rebuild it from a finished demo's files:
``python scripts/serve_shift_report.py docs/results/serve-shift [WORK/log WORK/log-sciq]``.
The true accuracy of each window comes from the data sets' labels, which ``refcal monitor`` never reads; it is
shown only to judge the monitor's label-free estimate.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

#: what each upstream of the demo is (``summary["upstream"]``; runs before the option were SmolLM2's)
MODELS = {
    "smollm2": ("SmolLM2-135M-Instruct", "`--chat-template on` (the chat request the proxy forwards)"),
    "gemma-3-270m": ("Gemma-3-270M (the pre-trained model)", "the raw prompt to `/v1/completions`, as the proxy "
                     "forwards it: after a chat template this base model's first token is a newline, not a letter"),
}
REFERENCES = {"gemma-3-270m": "the packaged Gemma-3-270M base model",
              "smollm2-135m-instruct": "the packaged SmolLM2-135M-Instruct model"}


def _fmt(v, spec: str = ".3f") -> str:
    return "–" if v is None else format(v, spec)


def _ece(served: list[dict]) -> float | None:
    """ECE (10 equal-width bins, refcal's) of the deployed calibrator's answers: confidence vs right/wrong."""
    if not served:
        return None
    import numpy as np

    from refcal.metrics.core import TopLabel, ece

    wrong = np.array([0 if r["correct"] else 1 for r in served])
    conf = np.array([r["confidence"] for r in served], dtype=float)
    return ece(TopLabel(wrong, conf), np.zeros(len(served), dtype=int))


def _table(mon: dict, rows: list[dict], ids_in_order: list[str]) -> str:
    """One line per window; the window's true accuracy from ``rows`` (matched by request id)."""
    by_id = {r["request_id"]: r for r in rows}
    out = ["| window | records | data set(s) | agreement [interval] | temperature [interval] | PSI | est. accuracy "
           "[interval] | true accuracy | ECE | flag |", "|---|---|---|---|---|---|---|---|---|---|"]
    start = 0
    for i, w in enumerate(mon["windows"]):
        ids = ids_in_order[start:start + w["n"]]
        start += w["n"]
        served = [by_id[x] for x in ids if x in by_id]
        sets = "+".join(sorted({r["dataset"] for r in served}))
        acc = sum(r["correct"] for r in served) / len(served) if served else None
        out.append(
            f"| {i} | {w['n']} | {sets} | {_fmt(w['agreement'])} [{_fmt(w['agreement_lo'])}, {_fmt(w['agreement_hi'])}] "
            f"| {_fmt(w['temperature'])} [{_fmt(w['temperature_lo'])}, {_fmt(w['temperature_hi'])}] | {_fmt(w['psi'])} "
            f"| {_fmt(w['accuracy'])} [{_fmt(w['accuracy_lo'])}, {_fmt(w['accuracy_hi'])}] | {_fmt(acc)} | {_fmt(_ece(served))} "
            f"| {'✗ temperature' if w['flag_temperature'] else ''}{' ✗ agreement' if w['flag_agreement'] else ''} |")
    return "\n".join(out)


def _reading(shift: dict, halves: dict, acc: dict, conf: dict, upstream: str, outcome: str | None = None) -> str:
    """What the numbers say, computed from them (no verdict is written by hand)."""
    ws = shift["windows"]
    n_agree = [round((w["agreement"] or 0) * w["n_reference"]) for w in ws]
    spans = [w["temperature_hi"] / w["temperature_lo"] for w in ws if w["temperature_lo"]]
    gap = {d: abs(sum(conf[d]) / len(conf[d]) - sum(acc[d]) / len(acc[d])) for d in acc if acc[d]}
    flagged = shift["summary"]["n_flagged"] + halves["summary"]["n_flagged"]
    lines = ["## Reading", "",
             f"* Power: DACA refits the temperature on the questions where the chat and the reference model agree: "
             f"{min(n_agree)} to {max(n_agree)} per window here, so each window's temperature interval spans a factor "
             f"of {min(spans):.{0 if min(spans) >= 10 else 1}f} to {max(spans):.{0 if max(spans) >= 10 else 1}f} (high / low end)." if spans else "* No window had a temperature.",
             "* Was there anything to flag? The deployed calibrator's estimate (mean calibrated confidence) is "
             + ", ".join(f"{gap[d]:.3f} from the true accuracy on {d}" for d in gap)
             + f"; the largest window PSI is {shift['summary']['max_psi']:.3f} (0.1 is the usual 'moderate' threshold)."]
    ece = {d: _ece([{"confidence": c, "correct": y} for c, y in zip(conf[d], acc[d], strict=True)]) for d in gap}
    if len(ece) == 2:
        a, b = ece
        lines.append(f"* The labels' verdict on the deployed calibrator: ECE {ece[a]:.3f} on {a}, {ece[b]:.3f} on {b} "
                     f"({ece[b] - ece[a]:+.3f}); true accuracy {sum(acc[a]) / len(acc[a]):.3f} -> "
                     f"{sum(acc[b]) / len(acc[b]):.3f}, the monitor's estimate {sum(conf[a]) / len(conf[a]):.3f} -> "
                     f"{sum(conf[b]) / len(conf[b]):.3f}.")
    chance = all(sum(acc[d]) / len(acc[d]) < 0.35 for d in acc if acc[d])
    if chance and not flagged and upstream == "smollm2":
        lines.append("* The 135M chat model answers both data sets near chance (4 options: 0.25), and the deployed "
                     "temperature makes its confidences near-uniform, so the calibrator fitted on SciQ still holds on "
                     "MMLU: in this pair of data sets there is no calibration drift for the monitor to find, and "
                     "flagging nothing is the right answer. Whether the monitor catches a real SciQ -> MMLU drift "
                     "needs a chat model well above chance on one of them (a larger model than the packaged ones); the "
                     "synthetic shift of docs/serving.md (the chat model twice as over-confident) is flagged in every "
                     "shifted window.")
    if outcome:
        lines.append(f"* {outcome.strip()} (written after the run)")
    return "\n".join(lines)


def _log_ids(folder: Path) -> list[str]:
    """Request ids of a monitor run's log in the reader's order (segments by name, lines in order)."""
    return [json.loads(line)["id"] for seg in sorted(folder.glob("segment-*.jsonl")) for line in seg.read_text().splitlines()]


def write_report(out: Path, rows: list[dict], summary: dict, logs: dict[str, Path] | None = None) -> None:
    shift = json.loads((out / "shift" / "monitor.json").read_text())
    halves = json.loads((out / "sciq-halves" / "monitor.json").read_text())
    order = {name: _log_ids(path) for name, path in (logs or {}).items()}
    ids_shift = order.get("shift") or [r["request_id"] for r in rows]  # records follow the answers' order
    ids_halves = order.get("sciq-halves") or [r["request_id"] for r in rows if r["dataset"] == "sciq"]
    s, h = shift["summary"], halves["summary"]

    def verdict(mon: dict, rc: int) -> str:
        m = mon["summary"]
        flagged = m["flagged_windows"]
        agree = [i for i, w in enumerate(mon["windows"]) if w["flag_agreement"]]
        return (f"exit code {rc}; temperature flag in window(s) {flagged or 'none'}; agreement outside its interval in "
                f"window(s) {agree or 'none'}; max PSI {_fmt(m['max_psi'])}")

    acc = {d: [r["correct"] for r in rows if r["dataset"] == d] for d in ("sciq", "mmlu")}
    conf = {d: [r["confidence"] for r in rows if r["dataset"] == d] for d in ("sciq", "mmlu")}
    cal = s["calibrator"]
    up = summary.get("upstream", "smollm2")
    chat, how = MODELS[up]
    ref = summary.get("reference", "gemma-3-270m")
    opts = "" if up == "smollm2" else (f" --upstream {up} --n {summary['n_per_dataset']} --n-calib "
                                       f"{summary['n_calib']} --window {summary['window']}")
    note = f"\n{summary['note'].strip()}\n" if summary.get("note") else ""
    text = f"""# A real constructed shift: SciQ, then MMLU, through `refcal serve` in front of llama.cpp

Made by `scripts/serve_shift_demo.py{opts}` (seed {summary['seed']}; {summary['wall_s'] / 60:.0f} min on 2 shared CPU
cores, load average at the end {summary['loadavg_at_end'][0]:.1f}). Everything here is real: the chat model is the
packaged {chat} GGUF behind llama.cpp's OpenAI-compatible server (`scripts/llama_server.py`), scored with {how}; the
reference is {REFERENCES.get(ref, ref)}, scored by the proxy itself (`--reference {ref} --reference-rate
{summary['reference_rate']:g}`).

* **Calibrator**: DACA fitted with `refcal fit` on {summary['n_calib']} SciQ questions scored through the same llama.cpp
  server (`openai:{up}`) and by the reference: temperature
  {_fmt(s['deployed_temperature'])}; calibration-set agreement {_fmt(s['baseline_agreement'])}, mean calibrated
  confidence {_fmt(s['baseline_confidence'])} (`calibrator.json`, sha256 `{cal['sha256'][:16]}…`).
* **Served**: {summary['n_per_dataset']} other SciQ questions, then {summary['n_per_dataset']} MMLU test questions
  (all subjects, a random draw), one client, with the prompts `refcal score` uses (`served.jsonl`: each answer's
  request id, data set, confidence and, for this page only, whether it was right).
* **Monitor**: `refcal monitor LOG --calibrator calibrator.json --window {summary['window']} --baseline chat.jsonl
  --baseline-base base.jsonl` on the SciQ -> MMLU log, `--window {summary.get('window_sciq_halves', summary['window'])}`
  on the SciQ records alone, with the monitor's default thresholds (`--alpha 0.05` over all windows, Bonferroni);
  nothing was tuned on this data.
{note}
## SciQ then MMLU: {verdict(shift, summary['exit_code_shift'])}

{_table(shift, rows, ids_shift)}

(deployed temperature {_fmt(s['deployed_temperature'])}, interval level {_fmt(s['interval_level'], '.4f')}.) `shift/monitor.html`,
`shift/monitor.json`.

## Two halves of SciQ: {verdict(halves, summary['exit_code_sciq_halves'])}

{_table(halves, rows, ids_halves)}

(interval level {_fmt(h['interval_level'], '.4f')}.) `sciq-halves/monitor.html`, `sciq-halves/monitor.json`.

## What the labels say (never read by the monitor)

| data set | questions | true accuracy | mean calibrated confidence (the monitor's estimate) | ECE |
|---|---|---|---|---|
""" + "\n".join(f"| {d} | {len(acc[d])} | {_fmt(sum(acc[d]) / len(acc[d]) if acc[d] else None)} | "
                 f"{_fmt(sum(conf[d]) / len(conf[d]) if conf[d] else None)} | "
                 f"{_fmt(_ece([r for r in rows if r['dataset'] == d]))} |" for d in ("sciq", "mmlu")) + """

""" + _reading(shift, halves, acc, conf, up, summary.get("outcome")) + """

Files: `request.json` / `response.json` (the first request, sent with `curl`, and its real response),
`metrics.txt` (`GET /metrics` after the last request), `summary.json`.
"""
    (out / "README.md").write_text(text)


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    served = [json.loads(line) for line in (folder / "served.jsonl").read_text().splitlines()]
    logs = {"shift": Path(sys.argv[2]), "sciq-halves": Path(sys.argv[3])} if len(sys.argv) > 3 else None
    write_report(folder, served, json.loads((folder / "summary.json").read_text()), logs)
