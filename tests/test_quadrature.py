"""The collapsed path's quadrature against scipy numerical integration."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, optimize, special

from glmm_model import quadrature as q


def scipy_log_marginal(y, eta, s):
    """log ∫ Poisson(y | e^(eta+r)) N(r | 0, s) dr by adaptive quadrature (QUADPACK) around the mode."""
    def log_f(r):
        return y * (eta + r) - np.exp(eta + r) - special.gammaln(y + 1) - 0.5 * (r / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)

    # Mode by bracketing root-finding on the derivative (independent of our Wright-omega solver).
    d_log_f = lambda r: y - np.exp(eta + r) - r / s**2
    with np.errstate(over="ignore"):  # the bracket's far end overflows exp; brentq only needs the sign
        mode = optimize.brentq(d_log_f, -50 * s**2 - 50, y * s**2 + 50, xtol=1e-14, rtol=1e-15, maxiter=500)
    peak = log_f(mode)
    width = 1.0 / np.sqrt(np.exp(eta + mode) + 1.0 / s**2)
    breaks = [mode + k * width for k in (-30, -10, -3, -1, 0, 1, 3, 10)]
    lo, hi = mode - 40 * max(width, s) - 1, mode + 40 * width + 1
    value, _ = integrate.quad(lambda r: np.exp(log_f(r) - peak), lo, hi, points=breaks, limit=2000, epsabs=0, epsrel=1e-13)
    return np.log(value) + peak


def grid_points():
    rng = np.random.default_rng(0)
    corners = [(y, eta, s) for y in (0, 1, 2, 3, 9, 10, 10_000) for eta in (-5.0, 8.0) for s in (0.05, 3.0)]
    random = zip(
        np.concatenate([rng.integers(0, 30, 120), rng.integers(0, 10_001, 80)]),
        rng.uniform(-5, 8, 200),
        rng.uniform(0.05, 3, 200),
    )
    return corners + [(int(y), float(e), float(s)) for y, e, s in random]


def test_log_marginal_matches_scipy_within_1e6():
    points = grid_points()
    y, eta, s = (np.array(v, dtype=float) for v in zip(*points))
    ours = q.log_marginal_tiered(y, eta, s)
    ref = np.array([scipy_log_marginal(*p) for p in points])
    err = np.abs(ours - ref)
    worst = int(err.argmax())
    assert err.max() < 1e-6, f"worst at {points[worst]}: {ours[worst]} vs {ref[worst]}"


def test_jax_and_numpy_backends_agree():
    y = np.array([0.0, 1, 5, 40, 3000])
    eta = np.array([-4.0, 0.5, 1.0, 3.0, 8.0])
    s = np.array([2.5, 0.3, 1.0, 0.1, 0.7])
    for n in (16, 128):
        np.testing.assert_allclose(np.asarray(q.log_marginal(y, eta, s, n)), q.log_marginal(y, eta, s, n, xp=np), rtol=1e-12)


def test_jax_and_numpy_backends_agree_on_the_split_rule():
    y = np.array([0.0, 1, 2, 0, 2])
    eta = np.array([-4.0, 0.5, 1.0, 8.0, -3.5])
    s = np.array([2.5, 0.3, 1.0, 3.0, 0.05])
    np.testing.assert_allclose(np.asarray(q.log_marginal(y, eta, s, 48, split=True)),
                               q.log_marginal(y, eta, s, 48, xp=np, split=True), rtol=1e-12)


def test_half_range_rule_integrates_its_polynomials_exactly():
    """The n-point Gauss rule for e^{-u²} on [0, inf) integrates u^k exactly for k < 2n:
    the integral is Gamma((k + 1) / 2) / 2."""
    for n in (12, 24):
        u, log_wu = q.half_hermite_rule(n)
        assert (u > 0).all() and (np.diff(u) > 0).all()
        w = np.exp(log_wu - u**2)
        for k in range(2 * n):
            np.testing.assert_allclose(np.sum(w * u**k), special.gamma((k + 1) / 2) / 2, rtol=1e-12)


def test_first_tier_split_rule_within_1e7_where_the_symmetric_rule_needed_128_nodes():
    """Counts 0-2 on the split rule of 2 x 24 nodes: under 1e-7 of QUADPACK over eta -5..8 and
    s 0.05..3, including y = 0 at large s (a prior cut by a soft step), where the symmetric rule
    of the same 48 nodes is off by more than 1e-5."""
    limit, nodes, split = q.COUNT_TIERS[0]
    assert (limit, nodes, split) == (3, 48, True)
    points = [(y, e, sd) for y in (0, 1, 2) for e in np.linspace(-5, 8, 14) for sd in np.geomspace(0.05, 3, 12)]
    y, eta, s = (np.array(v, dtype=float) for v in zip(*points))
    ref = np.array([scipy_log_marginal(*p) for p in points])
    tiered = q.log_marginal_tiered(y, eta, s)
    assert np.abs(tiered - ref).max() < 1e-7
    np.testing.assert_array_equal(tiered, q.log_marginal(y, eta, s, 48, xp=np, split=True))
    assert np.abs(q.log_marginal(y, eta, s, 48, xp=np) - ref).max() > 1e-5


def test_split_rule_far_out_where_warmup_can_wander():
    """Counts 0-2 at s 3-50 and eta -40..40 (early warmup steps land there): finite values and
    derivatives, and no further from QUADPACK than the symmetric 128-node rule it replaced (0.05
    nats at worst there; a right half capped at scale 1 alone missed a prior of s = 29 cut at
    r = 40 by 0.35)."""
    points = [(y, e, sd) for y in (0, 1, 2) for e in np.linspace(-40, 40, 9) for sd in np.geomspace(3, 50, 6)]
    y, eta, s = (np.array(v, dtype=float) for v in zip(*points))
    with np.errstate(all="ignore"):  # exp(eta + r) overflows at far nodes: their terms are 0
        ref = np.array([scipy_log_marginal(*p) for p in points])
        symmetric_128 = q.log_marginal(y, eta, s, 128, xp=np)
    value, d_eta, d_s = q.log_marginal_tiered_grad(y, eta, s)
    assert np.isfinite(value).all() and np.isfinite(d_eta).all() and np.isfinite(d_s).all()
    assert np.abs(value - ref).max() < 0.05
    assert np.abs(value - ref).max() <= np.abs(symmetric_128 - ref).max()


def test_plain_gauss_hermite_would_be_wrong_at_large_counts():
    """Why the quadrature is adaptive: nodes centred at 0 miss a spike far from it."""
    y, eta, s = 5000.0, 2.0, 0.5
    x, log_wx = q.hermite_rule(16)
    r = np.sqrt(2) * s * x
    plain = special.logsumexp(log_wx - x**2 + y * (eta + r) - np.exp(eta + r) - special.gammaln(y + 1)) - 0.5 * np.log(np.pi)
    adaptive = q.log_marginal(y, eta, s, 16, xp=np)
    assert abs(adaptive - scipy_log_marginal(y, eta, s)) < 1e-6
    assert abs(plain - adaptive) > 1000


def test_wright_omega_matches_scipy():
    z = np.concatenate([np.linspace(-50, 5, 200), np.geomspace(5, 1e6, 100)])
    np.testing.assert_allclose(q.wright_omega(z, xp=np), special.wrightomega(z).real, rtol=1e-13)


@pytest.mark.parametrize("y,eta,s", [(0, -3.0, 2.0), (4, 1.0, 0.5), (700, 6.0, 0.2)])
def test_gradient_matches_finite_differences(y, eta, s):
    grad = jax.grad(lambda e, sd: q.log_marginal(jnp.float64(y), e, sd, 128), argnums=(0, 1))(eta, s)
    h = 1e-5
    d_eta = (scipy_log_marginal(y, eta + h, s) - scipy_log_marginal(y, eta - h, s)) / (2 * h)
    d_s = (scipy_log_marginal(y, eta, s + h) - scipy_log_marginal(y, eta, s - h)) / (2 * h)
    np.testing.assert_allclose([float(grad[0]), float(grad[1])], [d_eta, d_s], rtol=1e-5, atol=1e-6)


def test_tiered_numpy_gradient_is_the_samplers_and_the_integrals():
    """log_marginal_tiered_grad (the covariate's Laplace step uses it) gives the value of
    log_marginal_tiered and the gradient the sampler takes with JAX, on the tier rules; on a few
    points also QUADPACK's differences."""
    y, eta, s = (np.array(v, float) for v in zip(*grid_points()))
    value, d_eta, d_s = q.log_marginal_tiered_grad(y, eta, s)
    np.testing.assert_array_equal(value, q.log_marginal_tiered(y, eta, s))
    for mask, rule in q.tier_masks(y):
        jax_grad = jax.vmap(jax.grad(lambda yy, e, sd: q.log_marginal_rule(yy, e, sd, rule.x, rule.log_wx, split=rule.split),
                                     argnums=(1, 2)))
        g_eta, g_s = jax_grad(jnp.asarray(y[mask]), jnp.asarray(eta[mask]), jnp.asarray(s[mask]))
        # d/deta = y - E[exp(eta + r)] cancels digits at large counts: both sides are exact to ~1e-12 y
        bound = 1e-9 * (1.0 + y[mask])
        assert (np.abs(d_eta[mask] - np.asarray(g_eta)) <= bound).all()
        assert (np.abs(d_s[mask] - np.asarray(g_s)) <= bound * (1.0 + np.abs(np.asarray(g_s)))).all()
    h = 1e-5
    for yy, e, sd in [(0, -3.0, 2.0), (4, 1.0, 0.5), (700, 6.0, 0.2)]:
        _, ge, gs = q.log_marginal_tiered_grad(np.array([yy]), np.array([e]), np.array([sd]))
        fd_eta = (scipy_log_marginal(yy, e + h, sd) - scipy_log_marginal(yy, e - h, sd)) / (2 * h)
        fd_s = (scipy_log_marginal(yy, e, sd + h) - scipy_log_marginal(yy, e, sd - h)) / (2 * h)
        np.testing.assert_allclose([ge[0], gs[0]], [fd_eta, fd_s], rtol=1e-5, atol=1e-6)


def test_the_samplers_cell_loop_gives_the_tiered_sum_and_its_gradient():
    """cells_log_likelihood (the sampler's: each tier's cells walked in steps inside a loop whose
    length follows the data) equals the sum of weight x log_marginal_tiered over the cells and its
    JAX gradient equals log_marginal_tiered_grad's, on cells of every tier, padded to a capacity and
    two chains at once (vmap); padding and weight-0 cells count 0."""
    from glmm_model.model_inputs import cell_capacity

    rng = np.random.default_rng(3)
    y = np.concatenate([rng.integers(0, 3, 30), rng.integers(3, 10, 50), rng.integers(10, 20, 7),
                        rng.integers(20, 50, 90), rng.integers(50, 5000, 200)]).astype(float)
    rng.shuffle(y)
    eta = rng.uniform(-3, 6, y.size)
    weight = rng.integers(0, 40, y.size).astype(float)  # some cells weigh 0
    order, starts = q.cell_order(y)
    assert (np.diff(starts) > 0).all() and starts[-1] == y.size
    cap = cell_capacity(y.size)

    def laid_out(v):
        return jnp.asarray(np.concatenate([v[order], np.zeros(cap - y.size)]))

    ys, ws, lf = laid_out(y), laid_out(weight), laid_out(special.gammaln(y + 1.0))
    etas = jnp.stack([laid_out(eta), laid_out(eta - 0.7)])
    s = jnp.array([0.4, 1.7])
    value, (g_eta, g_s) = jax.jit(jax.vmap(jax.value_and_grad(
        lambda e, sd: q.cells_log_likelihood(e, sd, ys, ws, lf, jnp.asarray(starts)), argnums=(0, 1))))(etas, s)
    for c, shift in enumerate((0.0, 0.7)):
        ref, d_eta, d_s = q.log_marginal_tiered_grad(y, eta - shift, np.full(y.size, float(s[c])))
        np.testing.assert_allclose(float(value[c]), (weight * ref).sum(), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(g_eta[c])[:y.size], (weight * d_eta)[order], rtol=1e-9, atol=1e-9)
        assert (np.asarray(g_eta[c])[y.size:] == 0).all()
        np.testing.assert_allclose(float(g_s[c]), (weight * d_s).sum(), rtol=1e-9)
