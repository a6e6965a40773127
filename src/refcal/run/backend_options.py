"""The one place where a run's flags become backend options.

``--batch-size``, ``--device``, ``--dtype`` (local models), ``--api-letters`` (``openai:`` models), a
task kind's own defaults (free-form P(True) scores the bare letter) and the generic ``--model-option
KEY=VALUE`` all meet here, and the backend's options class (:meth:`refcal.backends.BackendOptions.build`)
validates the result, so a new backend option needs no CLI edit.

``--model-option KEY=VALUE`` applies to every model whose backend has ``KEY``; ``chat.KEY=VALUE`` or
``base.KEY=VALUE`` to one model only (and must be one of its backend's options). ``VALUE`` is read as JSON
when it parses (``3``, ``0.5``, ``true``, ``[0.8, 0]``), else as a string.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from ..backends import options_class
from ..errors import InputError

ROLES = ("base", "chat")


def parse_model_options(items: Iterable[str]) -> dict[str, Any]:
    """``["scale=3", "chat.bias=[0.8]"]`` -> ``{"scale": 3, "chat.bias": [0.8]}``; one line naming a bad item."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        role, dot, name = key.partition(".")
        if not sep or not key or (dot and (role not in ROLES or not name)):
            raise InputError(f"--model-option {item!r} is not KEY=VALUE (or chat.KEY=VALUE / base.KEY=VALUE), "
                             "e.g. --model-option batch_size=4")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out[key] = value
    return out


def backend_options(spec: str, role: str, *, flags: Mapping[str, Any], model_options: Mapping[str, Any],
                    defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The options of ``role``'s model ``spec`` (a dict of its options class's fields, validated).

    ``flags``: the run's dedicated flags by option name (``None``: not given); each is kept where this
    backend has that option. ``defaults``: the task kind's settings, likewise. ``model_options``: parsed
    ``--model-option`` values; an unprefixed one the backend lacks is skipped (it may serve the other
    model), one prefixed with this role must exist.
    """
    cls = options_class(spec)
    known = set(cls.__dataclass_fields__)
    given = {k: v for k, v in {**(defaults or {}), **flags}.items() if k in known and v is not None}
    given.update({k: v for k, v in model_options.items() if "." not in k and k in known})
    given.update({k.split(".", 1)[1]: v for k, v in model_options.items() if k.startswith(f"{role}.")})
    cls.build(given)  # refuses an option this backend does not have, naming it
    return given


def check_model_options(specs: Mapping[str, str], model_options: Mapping[str, Any]) -> None:
    """Refuse an unprefixed ``--model-option`` that no model of the run has (a typo, not a choice)."""
    for key in model_options:
        if "." not in key and not any(key in options_class(s).__dataclass_fields__ for s in specs.values()):
            raise InputError(f"--model-option {key} applies to none of the models ("
                             + ", ".join(f"{r} {s}" for r, s in specs.items()) + "); check its name")
