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

At counts 0-2 the integrand is lopsided: for y = 0 it is the Normal(0, s) prior cut
off to the right by the soft step exp(-exp(eta + r)), steeper than any Gaussian of the
Laplace scale. There the rule is split at the mode (:func:`split_rule`): the Gauss rule
for the weight e^{-u²} on [0, ∞) on each side, the left on sigma_hat and the right on
min(sigma_hat, 1) where the step is near, since its own width in r is about 1
(:func:`right_scale`):

    L ≈ Σ_side sqrt(2) sigma_side Σ_k ω_k exp(u_k²) f(r* ± sqrt(2) sigma_side u_k)

The mode and the scale are held out of the gradient (``stop_gradient``): the
quadrature is exact-to-tolerance for any centre near the mode, so its gradient in
(eta, s) is the quadrature of the integrand's gradient. Everything is float64.

Each function takes ``xp``: ``jax.numpy`` (the default, traced inside the
sampler, differentiable) or ``numpy`` (post-processing on concrete arrays: no
compilation, same arithmetic).
"""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import jax.scipy.special as jsp
import scipy.special as sp

# Rules by count tier, measured against scipy.integrate.quad over counts 0..10,000, eta -5..8,
# s 0.05..3 (tests/test_quadrature.py). Each tier is (first count above it, nodes, split). Counts 0-2
# are the hard cases: y = 0 with a large s is a prior tail cut by a soft step, which a symmetric rule
# centred at the mode fits badly (128 nodes for 1.2e-7, 64 for 8e-6). Their rule is *split* at the
# mode (:func:`split_rule`): a half-range Gauss-Hermite rule on each side, the left on the Laplace
# scale, the right, where the cut falls off, on that scale capped at RIGHT_SCALE_CAP (the Poisson
# factor's own width in the log-rate; :func:`right_scale`). 2 x 24 nodes keep counts 0-2 under 4.2e-8 (y = 0: 3.4e-8;
# tests/benchmarks/quadrature_nodes.py's accuracy table), a third of the 128 nodes the symmetric rule
# needed there. The integrand gets more Gaussian as the count grows, so fewer symmetric nodes do: worst
# errors seen were 3e-7 (24 nodes, y >= 3), 6e-7 (12, y >= 10), 2e-7 (10, y >= 20) and 6e-7 (8, y >=
# 50). Counts from 10 up share the 12-node rule: two more tiers of 10 and 8 nodes saved little
# arithmetic (the few cells of high counts) and cost two more loops of the sampler's likelihood, each
# padded to a whole step. Three tiers instead of five (2026-12-02, alternating, three runs each): the
# sampler program built in 8.0 s instead of 9.2 s, loaded in 0.53-0.58 s instead of 0.70-0.72 s, a
# process importing glmm_model and fitting the article's data 2.18-2.30 s instead of 2.45-2.50 s,
# sampling a 1M-user pair 1.86-1.99 s instead of 2.15-2.34 s.
COUNT_TIERS = ((3, 48, True), (10, 24, False), (None, 12, False))
RIGHT_SCALE_CAP = 1.0
DEFAULT_NODES = 16
_NEWTON_STEPS = 8
HALF_LOG_2PI = 0.5 * np.log(2.0 * np.pi)


class Rule(NamedTuple):
    """A quadrature rule in units of the Laplace scale: nodes ``x`` and ``log_wx`` = log(ω) + x².

    ``split``: the two halves of :func:`split_rule`, whose right half (x > 0) is scaled by the capped
    scale (:func:`rule_nodes`); otherwise a symmetric Gauss-Hermite rule (:func:`hermite_rule`).
    """

    x: np.ndarray
    log_wx: np.ndarray
    split: bool = False


@lru_cache(maxsize=None)
def hermite_rule(n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes x_k and log(ω_k) + x_k² of the n-point Gauss-Hermite rule (weight e^{-x²})."""
    x, w = np.polynomial.hermite.hermgauss(n_nodes)
    return x, np.log(w) + x**2


@lru_cache(maxsize=None)
def half_hermite_rule(n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes u_k > 0 and log(ω_k) + u_k² of the n-point Gauss rule for the weight e^{-u²} on [0, ∞).

    Golub-Welsch on the recurrence of the weight's orthogonal polynomials, found by the Stieltjes
    procedure on a discretisation of the weight that integrates polynomials of degree < 128 times
    e^{-u²} exactly up to its cut at u = 16 (16 panels of 64 Gauss-Legendre points; e^{-256} beyond).
    Moments up to degree 2n - 1 come out right to ~1e-15 (tests/test_quadrature.py).
    """
    t, w = np.polynomial.legendre.leggauss(64)
    u = np.concatenate([k + 0.5 * (t + 1.0) for k in range(16)])
    w = np.tile(0.5 * w, 16) * np.exp(-u * u)
    alpha, beta = np.zeros(n_nodes), np.zeros(n_nodes)
    p_prev, p = np.zeros_like(u), np.full_like(u, 1.0 / np.sqrt(w.sum()))
    for k in range(n_nodes):  # orthonormal polynomials: p_{k+1} sqrt(beta_{k+1}) = (u - alpha_k) p_k - sqrt(beta_k) p_{k-1}
        alpha[k] = np.sum(w * u * p * p)
        q = (u - alpha[k]) * p - np.sqrt(beta[k]) * p_prev
        if k + 1 < n_nodes:
            beta[k + 1] = np.sum(w * q * q)
            p_prev, p = p, q / np.sqrt(beta[k + 1])
    off = np.sqrt(beta[1:])
    nodes, vectors = np.linalg.eigh(np.diag(alpha) + np.diag(off, 1) + np.diag(off, -1))
    return nodes, np.log(w.sum() * vectors[0] ** 2) + nodes**2


@lru_cache(maxsize=None)
def split_rule(n_nodes: int) -> Rule:
    """The n-node rule split at the mode: :func:`half_hermite_rule` (n/2 nodes) mirrored to the left
    (x < 0, on the Laplace scale) and as it is to the right (x > 0, on the capped scale)."""
    u, log_wu = half_hermite_rule(n_nodes // 2)
    return Rule(np.concatenate([-u[::-1], u]), np.concatenate([log_wu[::-1], log_wu]), True)


def tier_rule(nodes: int, split: bool) -> Rule:
    """A tier's rule: :func:`split_rule` or the symmetric :func:`hermite_rule`."""
    return split_rule(nodes) if split else Rule(*hermite_rule(nodes))


def rule_nodes(rule: Rule, y, eta, r_star, sigma_hat, xp=jnp):
    """(r_k, log weights, scale) of ``rule`` at the mode r*: the nodes r_k = r* + sqrt(2) scale_k x_k,
    each node's log(ω_k) + x_k² + log(scale_k / scale), and the Laplace ``scale`` = sqrt(2) sigma_hat
    by which the sum is multiplied. scale_k is the Laplace scale, or on a split rule's right half
    sqrt(2) sigma_right (:func:`right_scale`)."""
    scale = np.sqrt(2.0) * sigma_hat
    if not rule.split:
        return r_star[..., None] + scale[..., None] * rule.x, rule.log_wx, scale
    right = np.sqrt(2.0) * right_scale(y, eta, r_star, sigma_hat, xp)
    if xp is jnp:  # held, as the mode and the Laplace scale are (it follows eta)
        right = jax.lax.stop_gradient(right)
    node_scale = xp.where(rule.x > 0, right[..., None], scale[..., None])
    return r_star[..., None] + node_scale * rule.x, rule.log_wx + xp.log(node_scale / scale[..., None]), scale


def right_scale(y, eta, r_star, sigma_hat, xp=jnp):
    """The scale of a split rule's right half: sigma_hat, capped at RIGHT_SCALE_CAP (the width of the
    Poisson factor's fall in r) where that fall is near, but at least a quarter of the distance d from
    the mode to it (where exp(eta + r) = max(y, 1)), so the half still reaches it when it is far:

        sigma_right = min(sigma_hat, max(RIGHT_SCALE_CAP, d / 4))

    (a prior of s = 29 cut at r = 40: 0.35 nats off with the cap alone, 0.03 with this; the grid of
    s up to 3 is unchanged.)"""
    d = xp.log(xp.maximum(y, 1.0)) - eta - r_star
    return xp.minimum(sigma_hat, xp.maximum(RIGHT_SCALE_CAP, 0.25 * d))


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


def log_marginal_rule(y, eta, s, x, log_wx, xp=jnp, split: bool = False):
    """log L(y | eta, s) on a given rule (nodes ``x``, ``log_wx = log ω + x²``, ``split``: a
    :func:`split_rule`); broadcasts."""
    gammaln, logsumexp = _special(xp)
    r_star, sigma_hat = laplace_mode(y, eta, s, xp)
    if xp is jnp:
        r_star, sigma_hat = jax.lax.stop_gradient(r_star), jax.lax.stop_gradient(sigma_hat)
    r, log_w, scale = rule_nodes(Rule(x, log_wx, split), y, eta, r_star, sigma_hat, xp)
    terms = log_w + _log_joint_kernel(r, y[..., None], eta[..., None], s[..., None], xp)
    return logsumexp(terms, axis=-1) + xp.log(scale / s) - gammaln(y + 1.0) - HALF_LOG_2PI


def log_marginal(y, eta, s, n_nodes: int = DEFAULT_NODES, xp=jnp, split: bool = False):
    """log L(y | eta, s) by adaptive Gauss-Hermite quadrature with n_nodes (``split``: the
    :func:`split_rule`); broadcasts."""
    y, eta, s = xp.broadcast_arrays(
        xp.asarray(y, xp.float64), xp.asarray(eta, xp.float64), xp.asarray(s, xp.float64)
    )
    x, log_wx, split = tier_rule(n_nodes, split)
    return log_marginal_rule(y, eta, s, x, log_wx, xp, split)


def tier_masks(y) -> list[tuple[np.ndarray, Rule]]:
    """(mask of counts in the tier, its rule) for each count tier, on concrete counts."""
    y = np.asarray(y)
    out, low = [], -np.inf
    for limit, nodes, split in COUNT_TIERS:
        high = np.inf if limit is None else limit
        out.append(((y >= low) & (y < high), tier_rule(nodes, split)))
        low = high
    return out


def rule_value_grad(y, eta, s, rule: Rule, log_factorial, xp=jnp):
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
    r, log_w, scale = rule_nodes(rule, y, eta, r_star, sigma_hat, xp)
    terms = log_w + _log_joint_kernel(r, y[..., None], eta[..., None], s[..., None], xp)
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
    for mask, rule in tier_masks(y):
        if not mask.any():
            continue
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            parts = rule_value_grad(y[mask], eta[mask], s[mask], rule, sp.gammaln(y[mask] + 1.0), xp=np)
        for o, part in zip(out, parts):
            o[mask] = part
    return out[0], out[1], out[2]


def log_marginal_tiered(y, eta, s) -> np.ndarray:
    """log L on concrete arrays (numpy), each count with the node count of its tier."""
    y, eta, s = np.broadcast_arrays(np.asarray(y, float), np.asarray(eta, float), np.asarray(s, float))
    out = np.empty(y.shape)
    for mask, rule in tier_masks(y):
        if mask.any():
            out[mask] = log_marginal_rule(y[mask], eta[mask], s[mask], rule.x, rule.log_wx, np, rule.split)
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
    return max(step_cells(nodes) for _, nodes, _ in COUNT_TIERS)


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
    for t, (_, nodes, split) in enumerate(COUNT_TIERS):
        rule = tier_rule(nodes, split)
        k, end = step_cells(nodes), starts[t + 1]

        def step(carry, k=k, end=end, rule=rule):
            i, total, g_eta, g_s = carry
            take = lambda a: jax.lax.dynamic_slice(a, (i,), (k,))  # noqa: E731
            w = jnp.where(i + jnp.arange(k) < end, take(weight), 0.0)  # the next tier's cells count 0 here
            used = w > 0
            yy, ee = jnp.where(used, take(y), 0.0), jnp.where(used, take(eta), 0.0)
            log_p, d_eta, d_s = rule_value_grad(yy, ee, s, rule, take(log_factorial))
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
