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
"""
from __future__ import annotations

from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln, logsumexp

jax.config.update("jax_enable_x64", True)

# Node counts by count tier, measured against scipy.integrate.quad over counts
# 0..10,000, eta -5..8, s 0.05..3 (tests/test_quadrature.py): y = 0 with a large s
# is the hard case (the integrand is a prior tail cut by a soft step), where 128
# nodes keep the error under 2e-7; from y = 10 on, 16 nodes are within 1e-7.
SMALL_COUNT_LIMIT = 10
SMALL_COUNT_NODES = 128
LARGE_COUNT_NODES = 16
DEFAULT_NODES = LARGE_COUNT_NODES
_NEWTON_STEPS = 8
_HALF_LOG_2PI = 0.5 * np.log(2.0 * np.pi)


@lru_cache(maxsize=None)
def hermite_rule(n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes x_k and log(ω_k) + x_k² of the n-point Gauss-Hermite rule (weight e^{-x²})."""
    x, w = np.polynomial.hermite.hermgauss(n_nodes)
    return x, np.log(w) + x**2


def wright_omega(z):
    """ω(z), the solution w > 0 of ``w + log w = z``, for real z (float64).

    Newton on ``f(u) = exp(u) + u - z`` with ``u = log w``: f is increasing and
    convex, and the start ``u0 = min(z, log z)`` (``z`` for z <= 1) lies right of
    the root, so the iterates decrease monotonically to it. Eight steps reach
    machine precision over the whole real line.
    """
    z = jnp.asarray(z, dtype=jnp.float64)
    u = jnp.where(z > 1.0, jnp.log(jnp.maximum(z, 1.0)), z)
    for _ in range(_NEWTON_STEPS):
        eu = jnp.exp(u)
        u = u - (eu + u - z) / (eu + 1.0)
    return jnp.exp(u)


def laplace_mode(y, eta, s):
    """Mode r* and Laplace scale sigma_hat of r given (y, eta, s); also w = ω(z)."""
    s2 = s * s
    w = wright_omega(jnp.log(s2) + eta + y * s2)
    r_star = y * s2 - w
    sigma_hat = s / jnp.sqrt(1.0 + w)
    return r_star, sigma_hat


def log_joint(r, y, eta, s):
    """log[ Poisson(y | exp(eta + r)) Normal(r | 0, s) ] (all terms)."""
    return (
        y * (eta + r)
        - jnp.exp(eta + r)
        - gammaln(y + 1.0)
        - 0.5 * (r / s) ** 2
        - jnp.log(s)
        - _HALF_LOG_2PI
    )


def log_marginal_rule(y, eta, s, x, log_wx):
    """log L(y | eta, s) on a given rule (nodes ``x``, ``log_wx = log ω + x²``); broadcasts."""
    r_star, sigma_hat = laplace_mode(y, eta, s)
    r_star = jax.lax.stop_gradient(r_star)
    scale = np.sqrt(2.0) * jax.lax.stop_gradient(sigma_hat)
    r = r_star[..., None] + scale[..., None] * x
    terms = log_wx + log_joint(r, y[..., None], eta[..., None], s[..., None])
    return logsumexp(terms, axis=-1) + jnp.log(scale)


def log_marginal(y, eta, s, n_nodes: int = DEFAULT_NODES):
    """log L(y | eta, s) by adaptive Gauss-Hermite quadrature with n_nodes; broadcasts."""
    y, eta, s = jnp.broadcast_arrays(
        jnp.asarray(y, jnp.float64), jnp.asarray(eta, jnp.float64), jnp.asarray(s, jnp.float64)
    )
    x, log_wx = hermite_rule(n_nodes)
    return log_marginal_rule(y, eta, s, x, log_wx)


def conditional_rate_mean(y, eta, s, n_nodes: int = DEFAULT_NODES):
    """E[exp(eta + r) | y, eta, s], the shrinkage estimate of one user's rate.

    Uses ``exp(eta + r) Poisson(y | λ) = (y + 1) Poisson(y + 1 | λ)``, so the
    conditional mean is ``(y + 1) L(y + 1) / L(y)``.
    """
    y = jnp.asarray(y, jnp.float64)
    return (y + 1.0) * jnp.exp(log_marginal(y + 1.0, eta, s, n_nodes) - log_marginal(y, eta, s, n_nodes))


def nodes_for_counts(y) -> np.ndarray:
    """Number of quadrature nodes each count needs (the tier rule above)."""
    return np.where(np.asarray(y) < SMALL_COUNT_LIMIT, SMALL_COUNT_NODES, LARGE_COUNT_NODES)


def log_marginal_tiered(y, eta, s) -> np.ndarray:
    """log L for concrete arrays, each count with the node count of its tier (numpy out)."""
    y, eta, s = np.broadcast_arrays(np.asarray(y, float), np.asarray(eta, float), np.asarray(s, float))
    out = np.empty(y.shape)
    small = y < SMALL_COUNT_LIMIT
    for mask, n in ((small, SMALL_COUNT_NODES), (~small, LARGE_COUNT_NODES)):
        if mask.any():
            out[mask] = np.asarray(log_marginal(y[mask], eta[mask], s[mask], n))
    return out
