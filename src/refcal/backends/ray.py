"""Score on a Ray cluster: the driver plans the batches, an actor pool of model replicas scores them.

:class:`RayBackend` stands in for a backend in :func:`refcal.scoring.score_questions`. The scorer
plans its batches exactly as in one process (over all questions, before the cache is read) and hands
the batches still to score to :meth:`RayBackend.dispatch_batches`, which runs them through Ray Data
``map_batches`` over an actor pool (:class:`ray.data.ActorPoolStrategy`): one actor per model replica,
each loading its backend once from the spec and options (:func:`refcal.backends.load_backend`), one
planned batch per call. Results stream back to the driver as batches finish, in any order, and the
driver writes them to the same append-only cache as a single-process run, so

* the scores equal a single-process run's on the same batches (each batch is one backend call, as
  there), bit for bit on deterministic hardware;
* ``kill -9`` of the driver loses only the batches in flight: a new run re-plans, reads the cache and
  sends only the unfinished batches;
* a killed worker is restarted by Ray and its batch sent again (``max_restarts=-1``,
  ``max_task_retries=-1``, Ray Data's defaults for actor pools).

A backend that keeps request counters in ``stats`` (the API backend's :class:`~refcal.backends.openai.APIStats`)
has them in every actor; each result carries what its batch added, and :attr:`RayBackend.stats` sums
them on the driver (strings such as ``letter_source`` are merged), so ``metrics.json`` and the report
show the same counters as a single-process run.

The driver needs the backend's fingerprint (it keys the cache), its meta and the length of every
request (the batch plan) before any batch is sent; a short-lived *probe* actor with the same resources
as a worker loads the backend once to answer them, and is gone before the pool starts. That is one
model load more than the workers' own.

Without ``address`` a private Ray instance is started on this machine (``address="local"``, no
dashboard, no token authentication, its session files under the score cache) and shut down at
:meth:`RayBackend.close`; with ``address="auto"`` or ``HOST:PORT`` the driver joins a running cluster
and leaves it running.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import backends as registry  # load_backend looked up at call time (tests swap it for fakes)
from .._paths import cache_root
from ..errors import BackendError, InputError, MissingDependencyError, ModelError
from ..tasks import request_text_length
from ._ray_address import cluster_address, parse_address
from .base import call_iter

log = logging.getLogger(__name__)

#: AF_UNIX socket paths hold at most 107 bytes; Ray puts its sockets at
#: ``<temp>/session_<date>_<time>_<microseconds>_<pid>/sockets/<name>``, under our ``r<8 random>`` folder
_SOCKET_PATH_MAX = 107
_SOCKET_TAIL = len("/r12345678/session_2026-12-02_07-13-12_123456_1234567/sockets/plasma_store")


@dataclass(frozen=True)
class RayOptions:
    """How :class:`RayBackend` uses Ray.

    ``workers``: actors (model replicas) in the pool; ``address``: ``None`` for a private local
    instance, ``"auto"`` or ``HOST:PORT`` to join a cluster; ``num_cpus`` / ``num_gpus``: resources of
    each actor (Ray schedules them where they fit; fractional GPUs share one); ``threads``: torch
    threads of each actor (default: ``num_cpus`` rounded up); ``temp_dir``: session files of a private
    instance (default: ``<cache root>/ray``, or a short folder under the system's temp dir when that
    path is too long for Unix sockets).
    """

    workers: int = 1
    address: str | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    threads: int | None = None
    temp_dir: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise InputError(f"--workers must be a positive integer, got {self.workers!r}")
        if not (self.num_cpus > 0 and self.num_gpus >= 0):
            raise InputError("Ray actors need a positive number of CPUs and a non-negative number of GPUs")
        if self.threads is not None and (isinstance(self.threads, bool) or int(self.threads) < 1):
            raise InputError(f"threads per Ray actor must be a positive integer, got {self.threads!r}")
        if self.address is not None:
            parse_address(self.address)  # refuses what is not auto / HOST:PORT with the flag's name


def _stats(backend: Any) -> dict[str, Any] | None:
    """A backend's ``stats`` (a dataclass or a mapping of counters) as a dict; None if it keeps none."""
    st = getattr(backend, "stats", None)
    if st is None:
        return None
    if dataclasses.is_dataclass(st) and not isinstance(st, type):
        return dataclasses.asdict(st)
    return dict(st) if isinstance(st, Mapping) else None


def _stats_delta(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What one batch added to the counters (numbers); other values (strings) as they are after it."""
    if after is None:
        return None
    before = before or {}
    return {k: (v - before.get(k, 0) if _is_count(v) else v) for k, v in after.items()}


def merge_stats(total: dict[str, Any], delta: Mapping[str, Any]) -> None:
    """Add ``delta`` (from :func:`_stats_delta`) into ``total``: numbers are summed; strings that
    differ between actors are joined with ``+`` (``"unresolved"`` yields to any resolved value); a note
    (a key ending in ``_note``, a sentence) keeps the first non-empty one."""
    for k, v in delta.items():
        if _is_count(v):
            total[k] = total.get(k, 0) + v
        elif k.endswith("_note"):
            total[k] = total.get(k) or v
        elif isinstance(v, str):
            seen = [x for x in str(total.get(k, "")).split("+") if x and x != "unresolved"]
            if v != "unresolved" and v not in seen:
                seen.append(v)
            total[k] = "+".join(sorted(seen)) if seen else "unresolved"
        else:
            total[k] = v


def _is_count(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _load(spec: str, options: Mapping[str, Any], threads: int | None) -> Any:
    """The backend of one actor (runs in the Ray worker process)."""
    if threads:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        try:
            import torch  # optional heavy dependency: only to cap a worker's threads
        except ImportError:
            pass
        else:
            torch.set_num_threads(int(threads))
    return registry.load_backend(spec, dict(options))


class _Probe:
    """Loads the backend once to tell the driver its fingerprint, meta and request lengths."""

    def __init__(self, spec: str, options: Mapping[str, Any], threads: int | None):
        self.backend = _load(spec, options, threads)

    def describe(self) -> dict[str, Any]:
        meta = getattr(self.backend, "meta", None)
        return {"fingerprint": str(self.backend.fingerprint),
                "batch_invariant": bool(getattr(self.backend, "batch_invariant", False)),
                "meta": dict(meta) if isinstance(meta, Mapping) else None,
                "length": hasattr(self.backend, "request_length"), "stats": _stats(self.backend)}

    def lengths(self, blob: bytes) -> list[int]:
        return [int(self.backend.request_length(r)) for r in pickle.loads(blob)]


class _Worker:
    """One model replica of the Ray Data actor pool: scores one planned batch per row."""

    def __init__(self, spec: str, options: Mapping[str, Any], threads: int | None, call: str):
        self.backend = _load(spec, options, threads)
        self.call = call

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out, stats = [], []
        for blob in batch["requests"]:
            reqs = pickle.loads(blob)
            before = _stats(self.backend)
            got = dict(call_iter(self.backend, self.call, reqs))  # one backend call per planned batch
            out.append(pickle.dumps([got.get(j) for j in range(len(reqs))]))
            stats.append(pickle.dumps(_stats_delta(before, _stats(self.backend))))
        return {"b": batch["b"], "results": np.array(out, dtype=object), "stats": np.array(stats, dtype=object),
                "pid": np.full(len(out), os.getpid(), dtype=np.int64)}


class RayBackend:
    """A backend whose planned batches are scored by an actor pool on Ray (see the module docstring).

    Parameters
    ----------
    spec : str
        The model, as for :func:`refcal.backends.load_backend` (each actor loads it).
    options : backend options dataclass or dict, optional
        The backend's options (:func:`refcal.backends.options_class`); sent to every actor.
    ray : RayOptions or dict, optional
        Workers, cluster address and resources per actor; keyword arguments override it.

    Use as a context manager (or call :meth:`close`) so a private Ray instance is shut down.
    """

    def __init__(self, spec: str, options: Any = None, ray: RayOptions | Mapping[str, Any] | None = None,
                 *, api_base: str | None = None, **kwargs: Any):
        if isinstance(ray, RayOptions):
            ray = {k: getattr(ray, k) for k in RayOptions.__dataclass_fields__}
        self.ray_options = RayOptions(**{**dict(ray or {}), **kwargs})
        cls = registry.options_class(spec)
        over = {"api_base": api_base} if api_base is not None and "api_base" in cls.__dataclass_fields__ else {}
        opts = cls.build(options, **over)  # unknown options are refused here, before Ray starts
        self.spec = spec
        self._options = {k: getattr(opts, k) for k in cls.__dataclass_fields__}
        self._threads = self.ray_options.threads or max(1, int(-(-self.ray_options.num_cpus // 1)))
        self._ray = None
        self._private_dir: Path | None = None
        self._probe = None
        self.pids: set[int] = set()  # worker processes that returned results (tests, logs)
        self._start()
        try:
            info = self._ray.get(self._probe.describe.remote())
        except Exception:
            self.close()
            raise
        self.fingerprint: str = info["fingerprint"]
        self.batch_invariant: bool = info["batch_invariant"]
        self._meta = info["meta"]
        self._has_length = info["length"]
        #: the actors' counters summed over the batches they returned (None if the backend keeps none);
        #: as a single-process backend's ``stats``, they count what this process's run sent
        self.stats: dict[str, Any] | None = None
        if info["stats"] is not None:
            self.stats = {}
            merge_stats(self.stats, _stats_delta(info["stats"], info["stats"]))  # zeros, strings as loaded

    # ------------------------------------------------------------------------------ backend protocol
    @property
    def meta(self) -> dict[str, Any]:
        ro = self.ray_options
        meta = dict(self._meta or {})
        if self.stats is not None:  # the counters in the backend's meta are the probe's: use the actors'
            meta.update({k: v for k, v in self.stats.items() if k in meta})
        return {**meta, "ray": {"workers": ro.workers, "num_cpus": ro.num_cpus,
                                "num_gpus": ro.num_gpus, "threads": self._threads}}

    def request_lengths(self, requests: Sequence[Any]) -> list[int]:
        """Lengths of ``requests`` as the backend measures them (one round trip to the probe)."""
        if not self._has_length:
            return [request_text_length(r) for r in requests]
        if self._probe is None:
            raise ModelError("the Ray probe actor is gone; request lengths are needed before dispatching batches")
        return self._ray.get(self._probe.lengths.remote(pickle.dumps(list(requests))))

    def dispatch_batches(self, call: str, batches: Sequence[Sequence[Any]]) -> Iterator[tuple[int, Iterator]]:
        """Score each batch (a list of requests) with one ``call`` on some actor; yield ``(batch index,
        (request index, result) pairs)`` as batches finish, in any order."""
        if not batches:
            return
        ray = self._ray
        if self._probe is not None:  # free its resources (a GPU) for the pool
            ray.kill(self._probe)
            self._probe = None
        import ray.data as rd  # the optional `ray` extra, imported on use

        ctx = rd.DataContext.get_current()
        ctx.execution_options.preserve_order = False
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        items = [{"b": b, "requests": pickle.dumps(list(reqs))} for b, reqs in enumerate(batches)]
        ro = self.ray_options
        ds = rd.from_items(items, override_num_blocks=len(items)).map_batches(
            _Worker, fn_constructor_args=(self.spec, self._options, self._threads, call), batch_size=1,
            compute=rd.ActorPoolStrategy(size=min(ro.workers, len(items))), num_cpus=ro.num_cpus,
            num_gpus=ro.num_gpus or None, batch_format="numpy", zero_copy_batch=True,
        )
        try:
            for row in ds.iter_rows():
                self.pids.add(int(row["pid"]))
                delta = pickle.loads(row["stats"])
                if delta is not None:
                    if self.stats is None:
                        self.stats = {}
                    merge_stats(self.stats, delta)
                results = pickle.loads(row["results"])
                yield int(row["b"]), iter([(j, r) for j, r in enumerate(results) if r is not None])
        except Exception as exc:
            if isinstance(exc, BackendError | InputError):
                raise
            cause = _user_error(exc)
            if cause is not None:
                raise cause from None
            raise ModelError(f"a Ray worker failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                             "the finished batches are cached, run the same command again to resume") from None

    # ------------------------------------------------------------------------------ lifecycle
    def _start(self) -> None:
        try:
            import ray  # the optional `ray` extra, imported on use
        except ImportError as exc:
            raise MissingDependencyError("ray", "ray") from exc
        self._ray = ray
        ro = self.ray_options
        if ray.is_initialized():
            pass
        elif ro.address is None:
            self._private_dir = _temp_dir(ro.temp_dir)
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(address="local", include_dashboard=False, _temp_dir=str(self._private_dir),
                     num_cpus=max(os.cpu_count() or 1, int(-(-ro.num_cpus * ro.workers // 1))),
                     log_to_driver=False, logging_level=logging.WARNING, configure_logging=False)
        else:
            cluster_address(ro.address)  # bounded: Ray alone waits for an absent cluster for ever
            try:
                ray.init(address=ro.address, log_to_driver=False, logging_level=logging.WARNING,
                         configure_logging=False)
            except ConnectionError as exc:
                raise BackendError(f"cannot join the Ray cluster at --ray-address {ro.address} "
                                   f"({str(exc).splitlines()[0][:160]}); check the address or leave it out for a "
                                   "private instance") from None
        remote = ray.remote(num_cpus=ro.num_cpus, num_gpus=ro.num_gpus)(_Probe)
        self._probe = remote.remote(self.spec, self._options, self._threads)

    def close(self) -> None:
        """Stop the probe and, for a private instance, Ray itself (its session files are removed)."""
        ray = self._ray
        if ray is None:
            return
        if self._probe is not None:
            try:
                ray.kill(self._probe)
            except Exception:  # noqa: BLE001 - already gone
                pass
            self._probe = None
        if self._private_dir is not None:
            ray.shutdown()
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None
        self._ray = None

    def __enter__(self) -> RayBackend:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


def _user_error(exc: BaseException) -> BaseException | None:
    """The refcal error raised inside a worker, if that is what failed (Ray wraps it)."""
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 8:
        for cand in (getattr(cur, "cause", None), cur.__cause__):
            if isinstance(cand, BackendError | InputError):
                return cand
        cur = getattr(cur, "cause", None) or cur.__cause__
        seen += 1
    return None


def _temp_dir(requested: str | None) -> Path:
    """A fresh folder for a private Ray instance's session files, short enough for Unix sockets."""
    root = Path(requested) if requested else cache_root() / "ray"
    if len(str(root.resolve())) + _SOCKET_TAIL <= _SOCKET_PATH_MAX:
        root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="r", dir=root))
    log.info("Ray session files go under %s: %s is too long a path for Unix sockets", tempfile.gettempdir(), root)
    return Path(tempfile.mkdtemp(prefix="refcal-ray-"))


def open_backend(spec: str, ray: RayOptions | Mapping[str, Any] | None = None, *, api_base: str | None = None,
                 **options: Any) -> Any:
    """A context manager giving the backend of ``spec``: local (:func:`refcal.backends.load_backend`)
    when ``ray`` is None, else a :class:`RayBackend` with those Ray options, closed on exit."""
    if ray is None:
        return nullcontext(registry.load_backend(spec, api_base=api_base, **options))
    return RayBackend(spec, options, ray, api_base=api_base)
