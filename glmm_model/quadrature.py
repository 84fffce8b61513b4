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

# Node counts by count tier, measured against scipy.integrate.quad over counts
# 0..10,000, eta -5..8, s 0.05..3 (tests/test_quadrature.py). y = 0 with a large s
# is the hard case (a prior tail cut by a soft step): 128 nodes keep it under 2e-7.
# The integrand gets more Gaussian as the count grows, so fewer nodes do: worst
# errors seen were 3e-7 (24 nodes, y >= 3), 6e-7 (12, y >= 10), 2e-7 (10, y >= 20)
# and 6e-7 (8, y >= 50). Each tier is (first count above it, nodes).
COUNT_TIERS = ((3, 128), (10, 24), (20, 12), (50, 10), (None, 8))
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


def log_marginal_tiered_grad(y, eta, s) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log L and its derivatives in eta and s on concrete arrays (numpy), each count on its tier's rule.

    The rule is held where :func:`log_marginal_rule` puts it (at the conditional mode, as the
    sampler's gradient does with ``stop_gradient``), so the derivatives are those of the integral,
    taken under it: with p_k the normalised terms at nodes r_k,
    d/deta log L = sum_k p_k (y - exp(eta + r_k)) and d/ds log L = sum_k p_k r_k^2 / s^3 - 1/s.
    They agree with differences of the quadrature's values to its error (~1e-7).
    """
    y, eta, s = np.broadcast_arrays(np.asarray(y, float), np.asarray(eta, float), np.asarray(s, float))
    out = [np.empty(y.shape) for _ in range(3)]
    for mask, n in tier_masks(y):
        if not mask.any():
            continue
        x, log_wx = hermite_rule(n)
        yt, et, st = y[mask], eta[mask], s[mask]
        r_star, sigma_hat = laplace_mode(yt, et, st, xp=np)
        scale = np.sqrt(2.0) * sigma_hat
        r = r_star[:, None] + scale[:, None] * x
        terms = log_wx + _log_joint_kernel(r, yt[:, None], et[:, None], st[:, None], np)
        lse = _np_logsumexp(terms, axis=-1)
        with np.errstate(invalid="ignore", over="ignore"):
            p = np.exp(terms - lse[:, None])
            out[0][mask] = lse + np.log(scale / st) - sp.gammaln(yt + 1.0) - HALF_LOG_2PI
            out[1][mask] = yt - (p * np.exp(et[:, None] + r)).sum(axis=-1)
            out[2][mask] = (p * r * r).sum(axis=-1) / st**3 - 1.0 / st
    return out[0], out[1], out[2]


def log_marginal_tiered(y, eta, s) -> np.ndarray:
    """log L on concrete arrays (numpy), each count with the node count of its tier."""
    y, eta, s = np.broadcast_arrays(np.asarray(y, float), np.asarray(eta, float), np.asarray(s, float))
    out = np.empty(y.shape)
    for mask, n in tier_masks(y):
        if mask.any():
            out[mask] = log_marginal(y[mask], eta[mask], s[mask], n, xp=np)
    return out
