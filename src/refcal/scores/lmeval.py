"""lm-evaluation-harness ``--log_samples`` files of ``multiple_choice`` tasks as score sets.

Two layouts are read, recognised by their content (not their name):

* lm-eval >= 0.4.3: ``samples_<task>_<date>.jsonl``, one JSON object per document;
* lm-eval 0.4.0-0.4.2: ``<model_args>_<task>.jsonl`` holding one JSON array (``json.dumps(samples,
  indent=2)``) of the same objects.

Each object has ``doc_id``, ``target`` (the gold choice: an index, its text, or a digit string), ``arguments``
(one ``(context, continuation)`` request per choice) and ``filtered_resps``: one ``[loglikelihood,
is_greedy]`` per choice, written as strings by lm-eval >= 0.4.3 (``["-6.73", "False"]``) and as numbers
by older releases. refcal maps them to

* ``id`` = ``doc_id``; ``label`` = the gold index (unknown, -1, when ``target`` names no single choice);
* ``logits`` = the per-choice log-likelihoods (``metric="acc"``), divided by each choice's length in
  characters (``"acc_norm"``) or in UTF-8 bytes (``"acc_bytes"``), exactly what lm-eval ranks for those
  metrics (``lm_eval.api.task.ConfigurableTask.process_results``);
* ``meta``: ``format``, ``task``, ``model`` (from the ``results_<date>.json`` beside the file when present),
  ``lmeval_metric``.

The choice text is the request's continuation without the task's ``target_delimiter`` (read from the
results file when present, else lm-eval's default, one space).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import InputError, ScoreFileError
from .scoreset import ScoreSet

#: lm-eval metrics whose ranking refcal can reproduce from a samples file
LMEVAL_METRICS = ("acc", "acc_norm", "acc_bytes")

_SAMPLES_NAME = re.compile(r"^samples_(?P<task>.+)_(?P<date>\d{4}-\d{2}-\d{2}T[\d\-.]+)\.jsonl?$")
_KEYS = ("doc_id", "filtered_resps")


#: the longest first line read to recognise a JSON Lines samples file (long few-shot prompts make lines of
#: hundreds of KiB; a "line" longer than this is not a sample)
_MAX_FIRST_LINE = 1 << 26


def _first_object(path: Path) -> tuple[str, Any]:
    """``("lines" | "array" | "", first object)`` from the head of a text file (the whole first line of a
    JSON Lines file, however long, up to 64 MiB)."""
    try:
        with open(path, encoding="utf-8-sig") as fh:
            head = fh.read(1 << 16)
            text = head.lstrip()
            if not text.startswith("[") and "\n" not in text and len(head) == 1 << 16:
                head += fh.readline(_MAX_FIRST_LINE)  # the rest of a first line longer than 64 KiB
                text = head.lstrip()
    except (OSError, UnicodeDecodeError):
        return "", None
    if text.startswith("["):
        # 0.4.0-0.4.2: an indented array; its first element ends at the first line "  }," or "  }"
        m = re.search(r"\n  \}(,|\n)", text)
        if m is None:
            return "array", None
        try:
            return "array", json.loads(text[1: m.start() + 4])
        except json.JSONDecodeError:
            return "array", None
    first = text.split("\n", 1)[0]
    try:
        return "lines", json.loads(first)
    except (json.JSONDecodeError, RecursionError):
        return "", None


def is_lmeval_log(path: str | Path) -> bool:
    """True when the file's first sample has lm-eval's ``doc_id`` and ``filtered_resps`` keys."""
    kind, obj = _first_object(Path(path))
    if kind == "array" and obj is None:
        return _read_array_head_slow(Path(path))
    return isinstance(obj, dict) and all(k in obj for k in _KEYS)


def _read_array_head_slow(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, list) and bool(data) and isinstance(data[0], dict) and all(k in data[0] for k in _KEYS)


def read_lmeval(path: str | Path, *, metric: str = "acc") -> ScoreSet:
    """Read an lm-eval samples file of a multiple-choice task as a :class:`refcal.scores.ScoreSet`.

    Parameters
    ----------
    path : path
        ``samples_<task>_<date>.jsonl`` (lm-eval >= 0.4.3) or the JSON array of 0.4.0-0.4.2.
    metric : {"acc", "acc_norm", "acc_bytes"}
        Which of lm-eval's rankings the logits reproduce (see the module docstring).

    Raises
    ------
    ScoreFileError
        Not a samples file of a multiple-choice task, or a malformed one.
    InputError
        Unknown ``metric``.
    """
    if metric not in LMEVAL_METRICS:
        raise InputError(f"lm-eval metric must be one of {', '.join(LMEVAL_METRICS)}, got {metric!r}")
    path = Path(path)
    src = str(path)
    kind, _ = _first_object(path)
    try:
        if kind == "array" or path.read_text(encoding="utf-8-sig").lstrip().startswith("["):
            samples = json.loads(path.read_text(encoding="utf-8-sig"))
            layout = "lm-eval 0.4.0-0.4.2 (JSON array)"
        else:
            with open(path, encoding="utf-8-sig") as fh:
                samples = [json.loads(line) for line in fh if line.strip()]
            layout = "lm-eval >= 0.4.3 (JSON Lines)"
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ScoreFileError(f"{src}: not a readable lm-evaluation-harness samples file ({e}); pass the "
                             "samples_<task>_<date>.jsonl written by lm_eval --log_samples") from None
    if not isinstance(samples, list) or not samples:
        raise ScoreFileError(f"{src}: no samples found; pass a file written by lm_eval --log_samples")
    task, results = _task_and_results(path)
    delim = " "
    if results is not None:
        cfg = (results.get("configs") or {}).get(task) or {}
        if isinstance(cfg.get("target_delimiter"), str):
            delim = cfg["target_delimiter"]
    ids, logits, labels = [], [], []
    for r, s in enumerate(samples):
        if not isinstance(s, dict) or any(k not in s for k in _KEYS):
            raise ScoreFileError(f"{src}: sample {r} lacks 'doc_id' or 'filtered_resps'; not an lm-eval samples file")
        doc_id = s["doc_id"]
        if isinstance(doc_id, bool) or not isinstance(doc_id, int | str) or doc_id == "":
            raise ScoreFileError(f"{src}: sample {r} has doc_id {_short(doc_id)}, not an integer or a string; "
                                 "pass the samples file as lm_eval --log_samples wrote it")
        if not isinstance(s["filtered_resps"], list):
            raise ScoreFileError(f"{src}: doc {doc_id!r}: 'filtered_resps' is {_short(s['filtered_resps'])}, not a "
                                 "list of [log-likelihood, is_greedy] responses; only multiple_choice tasks can be read")
        lls = [_loglik(resp, src, doc_id) for resp in s["filtered_resps"]]
        choices = [_continuation(a) for a in _requests(s.get("arguments"), src, doc_id)]
        if len(choices) != len(lls):
            raise ScoreFileError(
                f"{src}: doc {doc_id!r} has {len(lls)} responses but {len(choices)} requests; only plain "
                "multiple_choice tasks (one log-likelihood request per choice) can be read"
            )
        choices = [c[len(delim):] if delim and c.startswith(delim) else c for c in choices]
        if metric != "acc":
            sizes = [len(c) if metric == "acc_norm" else len(c.encode("utf-8")) for c in choices]
            if min(sizes) == 0:
                raise ScoreFileError(f"{src}: doc {doc_id!r} has an empty choice; {metric} divides by its length")
            lls = [v / z for v, z in zip(lls, sizes, strict=True)]
        ids.append(str(doc_id))
        logits.append(lls)
        labels.append(_gold(s.get("target"), choices))
    meta: dict[str, Any] = {"source": src, "format": layout, "lmeval_metric": metric, "scoring": f"lm-eval {metric}"}
    if task:
        meta["task"] = task
    if results is not None:
        model = results.get("model_name") or (results.get("config") or {}).get("model_args")
        if model:
            meta["model"] = str(model)
    return ScoreSet.from_rows(ids, logits, labels, meta=meta, source=src)


def _task_and_results(path: Path) -> tuple[str | None, dict | None]:
    """The task named by a ``samples_<task>_<date>.jsonl`` file and its ``results_<date>.json`` companion
    (None when absent). A companion that is present but malformed is refused: it sets the target
    delimiter, which decides the gold labels given as choice text."""
    m = _SAMPLES_NAME.match(path.name)
    if m is None:
        return None, None
    results_path = path.with_name(f"results_{m['date']}.json")
    if not results_path.is_file():
        return m["task"], None

    def bad(why: str) -> ScoreFileError:
        return ScoreFileError(f"{results_path}: {why}, so the samples beside it cannot be read with their task's "
                              "settings; restore the results file lm_eval wrote, or move it away (the defaults "
                              "are then used)")

    try:
        results = json.loads(results_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise bad(f"not a valid JSON results file ({type(e).__name__})") from None
    if not isinstance(results, dict):
        raise bad("not a JSON object")
    for key in ("configs", "config"):
        if results.get(key) is not None and not isinstance(results[key], dict):
            raise bad(f"'{key}' is not an object")
    cfg = (results.get("configs") or {}).get(m["task"])
    if cfg is not None and not isinstance(cfg, dict):
        raise bad(f"configs.{m['task']} is not an object")
    return m["task"], results


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_ARG_KEY = re.compile(r"^gen_args_(\d+)$")


def _requests(arguments: Any, src: str, doc_id: Any) -> list[Any]:
    # >= 0.4.3: {"gen_args_0": {"arg_0": ctx, "arg_1": cont}, ...}; 0.4.0-0.4.2: [[ctx, cont], ...]
    if isinstance(arguments, dict):
        keys = {k: _ARG_KEY.match(k) for k in arguments}
        odd = [k for k, ok in keys.items() if ok is None]
        if odd:
            raise ScoreFileError(f"{src}: doc {doc_id!r}: 'arguments' has the key {_short(odd[0])}, not "
                                 "gen_args_<n>; pass the samples file as lm_eval --log_samples wrote it")
        return [arguments[k] for k in sorted(arguments, key=lambda k: int(keys[k].group(1)))]
    if arguments is None or isinstance(arguments, list):
        return list(arguments or [])
    raise ScoreFileError(f"{src}: doc {doc_id!r}: 'arguments' is {_short(arguments)}, not the list of requests")


def _continuation(req: Any) -> str:
    if isinstance(req, dict):
        return str(req.get("arg_1", ""))
    if isinstance(req, list) and len(req) >= 2:
        return str(req[1])
    return ""


def _loglik(resp: Any, src: str, doc_id: Any) -> float:
    value = resp[0] if isinstance(resp, list) and resp else resp
    try:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    except (TypeError, ValueError):
        raise ScoreFileError(
            f"{src}: doc {doc_id!r}: response {resp!r} is not a log-likelihood; only multiple_choice tasks "
            "(output_type: multiple_choice) can be read"
        ) from None


def _gold(target: Any, choices: list[str]) -> int | None:
    """lm-eval's gold index: an int, a digit string (a rendered template), or the text of a choice."""
    if isinstance(target, list):
        target = target[0] if len(target) == 1 else None
    if isinstance(target, bool) or target is None:
        return None
    if isinstance(target, int):
        return target if 0 <= target < len(choices) else None
    if isinstance(target, str):
        if target in choices:
            return choices.index(target)
        if target.strip().isdigit() and int(target) < len(choices):
            return int(target)
    return None
