"""Solvers for the soft-target cross-entropy fit shared by every calibrator.

All of them minimise, over the parameters ``theta`` of a logit map ``z = map(g; theta)``,

    L(theta) = sum_i omega_i * KL(p_i || softmax(z_i)) (+ an optional L2 pull towards the identity)

where ``p_i`` is the target distribution (the base model's softmax for DACA / naive alignment, a one-hot
label for the oracles, whose KL is the NLL) and ``omega_i >= 0`` are normalised weights (agreement mask
times sample weight, divided by the total sample weight of all questions). Only rows with
``omega_i > 0`` are passed in. ``KL = sum p log p - sum p log q``; the entropy term is a constant that is
added to the reported objective but does not move the optimum.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from .._math import log_softmax
from ..errors import FitError
from ._maps import apply_affine, identity_params, unpack


@dataclass
class SolverResult:
    """What a solver found: parameters plus the convergence record saved with the calibrator."""

    params: object  # float temperature, or (coef, intercept)
    n_iter: int
    converged: bool
    objective: float
    message: str
    at_bound: str | None = None  # "max_temperature" / "min_temperature" when a bound is active


def _wsum(omega: np.ndarray | float, x: np.ndarray) -> float:
    # Pairwise summation instead of a BLAS dot: more accurate, and a threaded BLAS on a busy machine can
    # make a single 10^4-element dot product take milliseconds.
    return float(np.sum(omega * x))


def fit_temperature(
    logp: np.ndarray,
    g: np.ndarray,
    omega: np.ndarray,
    *,
    bounds: tuple[float, float],
    max_iter: int,
    tol: float,
) -> SolverResult:
    """Minimise ``L(beta)``, ``beta = 1/tau``, by a bracketed Newton method.

    ``L`` is convex in ``beta``: ``L'(beta) = sum_i omega_i (E_q[g_i] - E_p[g_i])`` and
    ``L''(beta) = sum_i omega_i Var_q[g_i] >= 0`` with ``q = softmax(beta g_i)``. Each iteration takes the
    Newton step and falls back to a geometric bisection of the bracket (``L' < 0`` at its left end,
    ``> 0`` at its right) when the step leaves it. Iteration stops when the step is below
    ``tol * beta``; as Newton converges quadratically the returned ``beta`` (one step further) is then
    accurate to rounding. ``beta`` is confined to ``[1/bounds[1], 1/bounds[0]]``; when the optimum lies
    outside, the nearest bound is returned and ``at_bound`` says which.

    Parameters
    ----------
    logp : ndarray, shape (m, k)
        Target log-probabilities (-inf where an option is missing).
    g : ndarray, shape (m, k)
        Logits to scale, -inf exactly where ``logp`` is -inf.
    omega : ndarray, shape (m,)
        Positive normalised weights.
    """
    gct, gst = centred_logits(g)
    check_not_all_tied(bool(np.any(gst)))
    gst2 = gst * gst
    w_ep, const = target_sums(np.ascontiguousarray(logp.T), gst, omega)

    def evaluate(beta: float) -> tuple[float, float, float]:
        s_eq, s_var, s_log = temperature_moments(beta, gct, gst, gst2, omega)
        return s_eq - w_ep, s_var, const + s_log - beta * w_ep

    return newton_temperature(evaluate, bounds=bounds, max_iter=max_iter, tol=tol)


def centred_logits(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(gct, gst)``, both shape (k, m): logits centred on each question's maximum (-inf kept) and the
    same with missing options set to 0.

    The (k, m) layout turns every per-question sum over the k options into k-1 vector additions (sums
    along a short last axis are an order of magnitude slower in numpy). Shifting a question's logits
    changes neither ``E_q[g] - E_p[g]`` nor the cross-entropy; centring on its maximum keeps
    ``exp(beta * gc) <= 1`` (no overflow, sum >= 1) and the differences well conditioned.
    """
    gt = np.ascontiguousarray(g.T)
    gct = gt - gt.max(axis=0)
    return gct, np.where(gt == -np.inf, 0.0, gct)


def check_not_all_tied(any_nonzero: bool) -> None:
    """Raise :class:`FitError` when every row that counts has all its (present) logits tied."""
    if not any_nonzero:
        raise FitError(
            "every question that counts has tied scores on all its options, so no temperature fits better "
            "than another; check the score files (identical logits usually mean a scoring bug)"
        )


def target_sums(logpt: np.ndarray, gst: np.ndarray, omega: np.ndarray | float) -> tuple[float, float]:
    """``(sum_i omega_i E_p[g_i], sum_i omega_i sum_j p_ij log p_ij)`` for targets ``logpt`` (k, m)."""
    pt = np.exp(logpt)
    w_ep = _wsum(omega, (pt * gst).sum(axis=0))
    # sum_j p_j log p_j with 0 log 0 = 0: mask p = 0 explicitly (0 * -inf is NaN); p may be 0 where g is not
    # missing (one-hot targets), so the mask comes from logp itself.
    const = _wsum(omega, (pt * np.where(logpt == -np.inf, 0.0, logpt)).sum(axis=0))
    return w_ep, const


def temperature_moments(
    beta: float, gct: np.ndarray, gst: np.ndarray, gst2: np.ndarray, omega: np.ndarray | float
) -> tuple[float, float, float]:
    """``(sum_i omega_i E_q[g_i], sum_i omega_i Var_q[g_i], sum_i omega_i log sum_j exp(beta gc_ij))``
    with ``q_i = softmax(beta g_i)``, for the (k, m) arrays of :func:`centred_logits` (``gst2 = gst**2``).

    The temperature objective is ``const + third - beta * w_ep``, its derivative in ``beta`` is
    ``first - w_ep`` and its second derivative ``second`` (see :func:`fit_temperature`); sums over blocks
    of rows add up, which is what the streaming fit (:mod:`refcal.streaming`) relies on.
    """
    e = np.exp(beta * gct)
    s0 = e.sum(axis=0)
    eq = (e * gst).sum(axis=0) / s0
    # Var_q = E_q[g^2] - E_q[g]^2: rounding may make it slightly negative; it only sets the step.
    var = np.maximum((e * gst2).sum(axis=0) / s0 - eq * eq, 0.0)
    return _wsum(omega, eq), _wsum(omega, var), _wsum(omega, np.log(s0))


def newton_temperature(
    evaluate: Callable[[float], tuple[float, float, float]],
    *,
    bounds: tuple[float, float],
    max_iter: int,
    tol: float,
) -> SolverResult:
    """The bracketed Newton iteration of :func:`fit_temperature` on ``beta = 1/tau``.

    ``evaluate(beta)`` returns ``(L'(beta), L''(beta), L(beta))``; it may compute them in one pass over
    in-memory arrays or by streaming over blocks of rows.
    """
    b_lo, b_hi = 1.0 / bounds[1], 1.0 / bounds[0]
    lo, hi = b_lo, b_hi
    lo_known = hi_known = False  # whether the sign of L' has been seen at lo / hi
    beta = min(max(1.0, b_lo), b_hi)
    at_bound, converged, message = None, False, f"no convergence in {max_iter} iterations"
    it = 0
    objective = float("nan")
    for it in range(1, max_iter + 1):  # noqa: B007 - `it` is reported after the loop
        d1, d2, objective = evaluate(beta)
        if d1 == 0.0:
            converged, message = True, "derivative exactly zero"
            break
        if d1 < 0:
            lo, lo_known = beta, True
        else:
            hi, hi_known = beta, True
        if beta == b_hi and d1 < 0:
            at_bound, converged = "min_temperature", True
            message = f"optimum at or below the smallest allowed temperature {bounds[0]:g}"
            break
        if beta == b_lo and d1 > 0:
            at_bound, converged = "max_temperature", True
            message = f"optimum at or above the largest allowed temperature {bounds[1]:g}"
            break
        new = beta - d1 / d2 if d2 > 0 else np.nan
        if abs(new - beta) <= tol * beta:
            # Checked before the bracket: at the optimum the step can round to zero (new == beta == lo),
            # which the bracket test would mistake for a step outside it and answer with a bisection.
            beta, converged, message = new, True, "converged (relative Newton step below tol)"
            break
        if not lo < new < hi:
            # Outside the bracket (or flat curvature): expand geometrically towards an unexplored
            # bound, else bisect the bracket geometrically (it can span many decades).
            if d1 < 0 and not hi_known:
                new = min(beta * 8.0, b_hi)
            elif d1 > 0 and not lo_known:
                new = max(beta / 8.0, b_lo)
            else:
                new = float(np.sqrt(lo * hi))
        if abs(new - beta) <= tol * beta:
            # Quadratic convergence: |new - beta*| ~ (new - beta)^2, so `new` is exact to rounding and
            # the objective differs from the one at `beta` by ~L'' (new - beta)^2, below rounding too.
            beta, converged, message = new, True, "converged (relative Newton step below tol)"
            break
        beta = new
    return SolverResult(1.0 / beta, it, converged, objective, message, at_bound)


def affine_objective(
    logp: np.ndarray, g: np.ndarray, omega: np.ndarray, *, scaling: str, l2: float
) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
    """``theta -> (L(theta), grad L(theta))`` for vector / matrix scaling.

    ``L = sum_i omega_i KL(p_i || softmax(z_i)) + (l2 / 2) ||theta - theta_id||^2`` with
    ``z_i = map(g_i; theta)`` (see :mod:`._maps`). With ``r_i = omega_i (q_i - p_i)`` (0 on missing
    options) the gradient is ``sum_i r_i * g~_i`` for ``w`` (vector), ``sum_i r_i g~_i^T`` for ``W``
    (matrix) and ``sum_i r_i`` for ``c``, plus ``l2 (theta - theta_id)``.
    """
    k = g.shape[1]
    missing = g == -np.inf
    gs = np.where(missing, 0.0, g)
    p = np.exp(logp)
    const = _wsum(omega, np.sum(p * np.where(logp == -np.inf, 0.0, logp), axis=1))  # 0 log 0 = 0
    theta_id = identity_params(scaling, k)

    def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
        coef, intercept = unpack(scaling, theta, k)
        logq = log_softmax(apply_affine(g, coef, intercept))
        ce = -_wsum(omega, np.sum(p * np.where(missing, 0.0, logq), axis=1))
        r = omega[:, None] * (np.exp(logq) - p)
        grad_w = (r * gs).sum(axis=0) if scaling == "vector" else np.einsum("ij,il->jl", r, gs).ravel()
        delta = theta - theta_id
        value = const + ce + 0.5 * l2 * float(np.sum(delta * delta))
        return value, np.concatenate([grad_w, r.sum(axis=0)]) + l2 * delta

    return fun


def fit_affine(
    logp: np.ndarray,
    g: np.ndarray,
    omega: np.ndarray,
    *,
    scaling: str,
    l2: float,
    max_iter: int,
    tol: float,
) -> SolverResult:
    """Vector / matrix scaling by L-BFGS-B on :func:`affine_objective`, starting at the identity map."""
    k = g.shape[1]
    res = minimize(
        affine_objective(logp, g, omega, scaling=scaling, l2=l2), identity_params(scaling, k), jac=True,
        method="L-BFGS-B", options={"maxiter": max_iter, "ftol": 1e-15, "gtol": tol},
    )
    grad_norm = float(np.max(np.abs(res.jac)))
    # L-BFGS-B stops with an "abnormal" line search when it can no longer decrease f in floating point;
    # at a stationary point (gradient at the noise floor) that is convergence, not failure.
    converged = bool(res.success or grad_norm <= np.sqrt(tol))
    message = f"{res.message} (max |gradient| {grad_norm:.2e})"
    return SolverResult(unpack(scaling, res.x.copy(), k), int(res.nit), converged, float(res.fun), message)
