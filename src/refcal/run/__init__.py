"""``refcal run`` as a library: configuration, evaluation protocol, evaluation, run folder, console table.

* :mod:`.config` — :class:`RunConfig` (defaults, validation)
* :mod:`.protocol` — which questions are scored and how they are cut into evaluation units
* :mod:`.evaluate` — fit every selected method of :mod:`refcal.calibrate.methods` per unit, evaluate,
  aggregate into a typed :class:`RunResult` (:mod:`.result`)
* :mod:`.folder` — the run folder; the only reader and writer of ``metrics.json`` (``schema_version``)
* :mod:`.table` — the console table
* :mod:`.job` — :func:`run`, the whole job

>>> from refcal.run import RunConfig, run, load_result        # doctest: +SKIP
>>> result = load_result(run(RunConfig(limit=60), "runs/small"))  # doctest: +SKIP
"""

from .config import DEFAULT_BASE, DEFAULT_CHAT, DEFAULT_DATASET, DEFAULT_LIMIT, RunConfig
from .folder import load_result
from .job import run
from .result import SCHEMA_VERSION, RunResult
from .table import summary_table

__all__ = ["RunConfig", "RunResult", "run", "load_result", "summary_table", "SCHEMA_VERSION", "DEFAULT_BASE",
           "DEFAULT_CHAT", "DEFAULT_DATASET", "DEFAULT_LIMIT"]
