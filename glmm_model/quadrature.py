"""Adaptive Gauss-Hermite quadrature for the Poisson-lognormal marginal likelihood.

For one user with linear predictor ``eta`` (fixed effects plus log exposure) and
count ``y``, the random intercept ``r ~ Normal(0, s)`` is integrated out:

    L(y | eta, s) = ∫ Poisson(y | exp(eta + r)) Normal(r | 0, s) dr

The integrand is log-concave in r. Its log, up to constants, is

    h(r) = y r - exp(eta + r) - r² / (2 s²)

with a single mode r* solving ``y - exp(eta + r) - r / s² = 0``. Writing
``r* = y s² - w`` turns that into ``w + log w = log(s²) + eta + y s²``, so
``w = ω(z)``, Wright's omega function, solved here by Newton steps on
``u = log w`` (monotone convergence from the right, see :func:`wright_omega`).
The curvature at the mode is ``-h''(r*) = exp(eta + r*) + 1/s² = (1 + w) / s²``.

Adaptive quadrature (lme4's nAGQ) centres the Gauss-Hermite nodes at r* and
scales them by ``sigma_hat = s / sqrt(1 + w)``:

    L ≈ sqrt(2) sigma_hat Σ_k ω_k exp(x_k²) f(r* + sqrt(2) sigma_hat x_k)

evaluated in log space. Plain Gauss-Hermite centred at zero is not used: at large
counts the integrand is a spike far from zero and it misses it by thousands of nats.

The mode and the scale are held out of the gradient (``stop_gradient``): the
quadrature is exact-to-tolerance for any centre near the mode, so its gradient in
(eta, s) is the quadrature of the integrand's gradient. Everything is float64.

Each function takes ``xp``: ``jax.numpy`` (the default, traced inside the
sampler, differentiable) or ``numpy`` (post-processing on concrete arrays: no
compilation, same arithmetic).
"""
from __future__ import annotations

from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
import jax.scipy.special as jsp
import scipy.special as sp

# Node counts by count tier, measured against scipy.integrate.quad over counts 0..10,000, eta -5..8,
# s 0.05..3 (tests/test_quadrature.py). y = 0 with a large s is the hard case (a prior tail cut by a
# soft step): 128 nodes keep it under 2e-7. The integrand gets more Gaussian as the count grows, so
# fewer nodes do: worst errors seen were 3e-7 (24 nodes, y >= 3), 6e-7 (12, y >= 10), 2e-7 (10, y >=
# 20) and 6e-7 (8, y >= 50). Each tier is (first count above it, nodes). Counts from 10 up share the
# 12-node rule: two more tiers of 10 and 8 nodes saved little arithmetic (the few cells of high
# counts) and cost two more loops of the sampler's likelihood, each padded to a whole step. Three
# tiers instead of five (2026-12-02, alternating, three runs each): the sampler program built in 8.0
# s instead of 9.2 s, loaded in 0.53-0.58 s instead of 0.70-0.72 s, a process importing glmm_model
# and fitting the article's data 2.18-2.30 s instead of 2.45-2.50 s, sampling a 1M-user pair
# 1.86-1.99 s instead of 2.15-2.34 s.
COUNT_TIERS = ((3, 128), (10, 24), (None, 12))
DEFAULT_NODES = 16
_NEWTON_STEPS = 8
HALF_LOG_2PI = 0.5 * np.log(2.0 * np.pi)


@lru_cache(maxsize=None)
def hermite_rule(n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes x_k and log(ω_k) + x_k² of the n-point Gauss-Hermite rule (weight e^{-x²})."""
    x, w = np.polynomial.hermite.hermgauss(n_nodes)
    return x, np.log(w) + x**2


def _np_logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    """log(sum(exp(a))) along ``axis`` for real numpy arrays, shifted by the maximum: scipy's version
    without its checks for complex input and signs, which took 3/4 of its time here (post-processing
    evaluates it on draws x cells x nodes)."""
    top = np.max(a, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.sum(np.exp(a - top), axis=axis)) + np.squeeze(top, axis=axis)


def _special(xp):
    """(gammaln, logsumexp) for the array module in use."""
    return (jsp.gammaln, jsp.logsumexp) if xp is jnp else (sp.gammaln, _np_logsumexp)


def wright_omega(z, xp=jnp):
    """ω(z), the solution w > 0 of ``w + log w = z``, for real z (float64).

    Newton on ``f(u) = exp(u) + u - z`` with ``u = log w``: f is increasing and
    convex, and the start ``u0 = min(z, log z)`` (``z`` for z <= 1) lies right of
    the root, so the iterates decrease monotonically to it. Eight steps reach
    machine precision over the whole real line.
    """
    z = xp.asarray(z, dtype=xp.float64)
    u = xp.where(z > 1.0, xp.log(xp.maximum(z, 1.0)), z)
    for _ in range(_NEWTON_STEPS):
        eu = xp.exp(u)
        u = u - (eu + u - z) / (eu + 1.0)
    return xp.exp(u)


def laplace_mode(y, eta, s, xp=jnp):
    """Mode r* and Laplace scale sigma_hat of r given (y, eta, s)."""
    s2 = s * s
    w = wright_omega(xp.log(s2) + eta + y * s2, xp)
    r_star = y * s2 - w
    sigma_hat = s / xp.sqrt(1.0 + w)
    return r_star, sigma_hat


def log_joint(r, y, eta, s, xp=jnp):
    """log[ Poisson(y | exp(eta + r)) Normal(r | 0, s) ] (all terms)."""
    gammaln, _ = _special(xp)
    return _log_joint_kernel(r, y, eta, s, xp) - gammaln(y + 1.0) - xp.log(s) - HALF_LOG_2PI


def _log_joint_kernel(r, y, eta, s, xp):
    """The part of :func:`log_joint` that varies with r (evaluated at every node)."""
    return y * (eta + r) - xp.exp(eta + r) - 0.5 * (r / s) ** 2


def log_marginal_rule(y, eta, s, x, log_wx, xp=jnp):
    """log L(y | eta, s) on a given rule (nodes ``x``, ``log_wx = log ω + x²``); broadcasts."""
    gammaln, logsumexp = _special(xp)
    r_star, sigma_hat = laplace_mode(y, eta, s, xp)
    if xp is jnp:
        r_star, sigma_hat = jax.lax.stop_gradient(r_star), jax.lax.stop_gradient(sigma_hat)
    scale = np.sqrt(2.0) * sigma_hat
    r = r_star[..., None] + scale[..., None] * x
    terms = log_wx + _log_joint_kernel(r, y[..., None], eta[..., None], s[..., None], xp)
    return logsumexp(terms, axis=-1) + xp.log(scale / s) - gammaln(y + 1.0) - HALF_LOG_2PI


def log_marginal(y, eta, s, n_nodes: int = DEFAULT_NODES, xp=jnp):
    """log L(y | eta, s) by adaptive Gauss-Hermite quadrature with n_nodes; broadcasts."""
    y, eta, s = xp.broadcast_arrays(
        xp.asarray(y, xp.float64), xp.asarray(eta, xp.float64), xp.asarray(s, xp.float64)
    )
    x, log_wx = hermite_rule(n_nodes)
    return log_marginal_rule(y, eta, s, x, log_wx, xp)


def tier_masks(y) -> list[tuple[np.ndarray, int]]:
    """(mask of counts in the tier, nodes) for each count tier, on concrete counts."""
    y = np.asarray(y)
    out, low = [], -np.inf
    for limit, nodes in COUNT_TIERS:
        high = np.inf if limit is None else limit
        out.append(((y >= low) & (y < high), nodes))
        low = high
    return out


def rule_value_grad(y, eta, s, x, log_wx, log_factorial, xp=jnp):
    """log L(y | eta, s) on one rule with its derivatives in eta and s; broadcasts over cells.

    The rule is held where :func:`log_marginal_rule` puts it (at the conditional mode), so the
    derivatives are those of the integral, taken under it: with p_k the normalised terms at
    nodes r_k, d/deta log L = sum_k p_k (y - exp(eta + r_k)) and
    d/ds log L = sum_k p_k r_k^2 / s^3 - 1/s. This is what JAX's gradient of
    :func:`log_marginal_rule` computes (it holds the mode with ``stop_gradient``), in one pass.
    ``log_factorial`` is log(y!). ``s`` is one value or one per cell.
    """
    s = xp.asarray(s)
    r_star, sigma_hat = laplace_mode(y, eta, s, xp)
    scale = np.sqrt(2.0) * sigma_hat
    r = r_star[..., None] + scale[..., None] * x
    terms = log_wx + _log_joint_kernel(r, y[..., None], eta[..., None], s[..., None], xp)
    top = xp.max(terms, axis=-1, keepdims=True)
    top = xp.where(xp.isfinite(top), top, 0.0)
    p = xp.exp(terms - top)
    total = xp.sum(p, axis=-1)
    value = xp.log(total) + top[..., 0] + xp.log(scale / s) - log_factorial - HALF_LOG_2PI
    p = p / total[..., None]
    d_eta = y - xp.sum(p * xp.exp(eta[..., None] + r), axis=-1)
    d_s = xp.sum(p * r * r, axis=-1) / s**3 - 1.0 / s
    return value, d_eta, d_s


def log_marginal_tiered_grad(y, eta, s) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log L and its derivatives in eta and s on concrete arrays (numpy), each count on its tier's
    rule (:func:`rule_value_grad`). They agree with differences of the quadrature's values to its
    error (~1e-7)."""
    y, eta, s = np.broadcast_arrays(np.asarray(y, float), np.asarray(eta, float), np.asarray(s, float))
    out = [np.empty(y.shape) for _ in range(3)]
    for mask, n in tier_masks(y):
        if not mask.any():
            continue
        x, log_wx = hermite_rule(n)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            parts = rule_value_grad(y[mask], eta[mask], s[mask], x, log_wx, sp.gammaln(y[mask] + 1.0), xp=np)
        for o, part in zip(out, parts):
            o[mask] = part
    return out[0], out[1], out[2]


def log_marginal_tiered(y, eta, s) -> np.ndarray:
    """log L on concrete arrays (numpy), each count with the node count of its tier."""
    y, eta, s = np.broadcast_arrays(np.asarray(y, float), np.asarray(eta, float), np.asarray(s, float))
    out = np.empty(y.shape)
    for mask, n in tier_masks(y):
        if mask.any():
            out[mask] = log_marginal(y[mask], eta[mask], s[mask], n, xp=np)
    return out


# The sampler's likelihood walks each tier's cells in steps of a fixed number of cells, about
# STEP_WORK nodes x cells per step, inside a loop whose length follows the data. The compiled
# program therefore depends on the cell arrays' capacity, not on how the cells split into tiers:
# one program serves every experiment of a family (model, arms, covariate) up to that capacity.
# A step's cells past its tier's end are padding, computed and dropped, and most tiers of a pair
# hold a few dozen cells: 512 halves that waste against 1024 for one more loop step at most.
# Value and gradient on a 1M-user pair's 40 cells: 17.4 us at 512, 22.3 us at 1024, 22.6 us at 256.
# Sampling per pair (tests/benchmarks/quadrature_nodes.py --step-work 512,1024, alternating):
# 0.97 s vs 1.15 s at 1,000 users, 1.86 s vs 2.33 s at 1,000,000.
STEP_WORK = 512


def step_cells(nodes: int) -> int:
    """Cells per loop step on an ``nodes``-point rule: the largest power of 2 <= STEP_WORK / nodes."""
    return 1 << max(0, int(np.floor(np.log2(STEP_WORK / nodes))))


def max_step_cells() -> int:
    """The most cells any tier's loop step reads: the slack the cell arrays carry past their end."""
    return max(step_cells(nodes) for _, nodes in COUNT_TIERS)


def cell_order(y) -> tuple[np.ndarray, np.ndarray]:
    """(order, starts): the cells' order tier by tier (the tiers of ``COUNT_TIERS``, cells in their
    given order within a tier) and where each tier starts in it (``len(COUNT_TIERS) + 1`` offsets)."""
    masks = tier_masks(y)
    order = np.concatenate([np.flatnonzero(mask) for mask, _ in masks]).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum([int(mask.sum()) for mask, _ in masks])]).astype(np.int32)
    return order, starts


def cell_log_likelihood(log_p, weight):
    """``weight * log_p``, safe at the edges of the parameter space.

    A probability's log is <= 0. Far out (s in the millions, beta0 near -1e17, where an early
    warmup step can land), the quadrature can return +inf or NaN; NUTS took such a point's
    potential of -inf as a free move, accepted it, and the chain never moved again (a stuck
    chain at s = 7e8 on a 20-user experiment). A non-finite value is a numerical failure, not
    evidence: it counts as impossible (-inf), so the step is rejected. Padding cells
    (weight 0) contribute exactly 0.
    """
    log_p = jnp.where(jnp.isfinite(log_p), jnp.minimum(log_p, 0.0), -jnp.inf)
    return jnp.where(weight > 0, weight * log_p, 0.0)


def _cells_value_grad(eta, s, y, weight, log_factorial, starts):
    """sum over cells of weight x log L, its gradient in eta (one per cell) and in s: tier t's
    cells (positions starts[t] to starts[t + 1]) on its rule, :func:`step_cells` at a time."""
    total, g_eta, g_s = jnp.zeros((), eta.dtype), jnp.zeros_like(eta), jnp.zeros((), eta.dtype)
    for t, (_, nodes) in enumerate(COUNT_TIERS):
        x, log_wx = hermite_rule(nodes)
        k, end = step_cells(nodes), starts[t + 1]

        def step(carry, k=k, end=end, x=x, log_wx=log_wx):
            i, total, g_eta, g_s = carry
            take = lambda a: jax.lax.dynamic_slice(a, (i,), (k,))  # noqa: E731
            w = jnp.where(i + jnp.arange(k) < end, take(weight), 0.0)  # the next tier's cells count 0 here
            used = w > 0
            yy, ee = jnp.where(used, take(y), 0.0), jnp.where(used, take(eta), 0.0)
            log_p, d_eta, d_s = rule_value_grad(yy, ee, s, x, log_wx, take(log_factorial))
            live = used & jnp.isfinite(log_p) & (log_p < 0.0)  # where the value is clipped, it is flat
            g_eta = jax.lax.dynamic_update_slice(g_eta, take(g_eta) + jnp.where(live, w * d_eta, 0.0), (i,))
            return (i + k, total + jnp.sum(cell_log_likelihood(log_p, w)), g_eta,
                    g_s + jnp.sum(jnp.where(live, w * d_s, 0.0)))

        _, total, g_eta, g_s = jax.lax.while_loop(lambda c, end=end: c[0] < end, step, (starts[t], total, g_eta, g_s))
    return total, g_eta, g_s


@jax.custom_jvp
def cells_log_likelihood(eta, s, y, weight, log_factorial, starts):
    """The collapsed model's log likelihood: sum over cells of ``weight * log L(y | eta, s)``
    (:func:`cell_log_likelihood` at the edges), each cell on its count tier's rule.

    ``eta`` and the data are arrays of one capacity, the cells ordered by :func:`cell_order` and
    the rest padding (weight 0); ``starts`` are the tiers' offsets. Its derivatives in ``eta``
    and ``s`` are :func:`rule_value_grad`'s, computed in the same pass as the value; the data
    (``y``, ``weight``, ``log_factorial``) are constants, not differentiated.
    """
    return _cells_value_grad(eta, s, y, weight, log_factorial, starts)[0]


@cells_log_likelihood.defjvp
def _cells_log_likelihood_jvp(primals, tangents):
    eta, s = primals[:2]
    d_eta, d_s = tangents[:2]
    value, g_eta, g_s = _cells_value_grad(*primals)
    return value, jnp.sum(g_eta * d_eta) + g_s * d_s
