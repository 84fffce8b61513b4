"""The Poisson GLMM with a per-user random intercept, in NumPyro.

For user i in arm g(i) (arm 0 is the control):

    y_i      ~ Poisson(mu_i)
    log mu_i = beta0 + beta[g(i)] + r_i + log(exposure_i),   beta[0] = 0
    r_i      ~ Normal(0, s)
    beta0    ~ Normal(beta0_loc, beta0_scale)
    beta[g]  ~ Normal(0, beta_scale)          g = 1..k-1
    s        ~ Exponential(s_rate)

With k = 2 and the 'article' priors (beta0_loc=0, beta0_scale=1, beta_scale=1,
s_rate=1) this is the source article's model; ``beta[1]`` is its ``beta1``.

Two model functions share the fixed effects:

* :func:`latent_model` samples one r_i per user, as the article does.
* :func:`collapsed_model` integrates r_i out (``PoissonLogNormal``, adaptive
  Gauss-Hermite) over histogram cells: users with equal (arm, count, exposure)
  contribute one term scaled by their number. Cells are ordered by count tier,
  each tier on its own quadrature rule, and padded to a capacity (padding has
  weight 0); the likelihood walks them in a loop whose length follows the data
  (:func:`.quadrature.cells_log_likelihood`), so one compiled program serves
  every experiment of a family (model, arms, covariate) up to that capacity.

With the pre-period covariate (the same metric's count before the user's first
exposure), the collapsed model's cells also carry their bin's centred
z_i = log1p(pre count) - mean and a no-history flag h_i (z_i = 0 then):

    log mu_i = beta0 + beta[g(i)] + gamma * z_i + delta * h_i + r_i + log(exposure_i)
    gamma ~ Normal(0, 1),  delta ~ Normal(0, 2.5)

The covariate is balanced across arms by randomisation, so exp(beta[g]) stays the
ratio of the arms' marginal means; it explains part of the between-user spread s,
which is what narrows beta's posterior.

A conversion metric (did the user do it at least once) has its own model,
:func:`conversion_model`: ``converted_i ~ Bernoulli(logit^-1(beta0 + beta[g(i)]))``,
with the same priors on beta0 (centred on the pooled log-odds) and beta (log-odds
ratios). One observation per user carries no information on a per-user
intercept, so there is none; users with equal (arm, converted) are one cell.

All take arrays and ``cv_count=None``; with ``cv_count`` omitted the same
function draws counts, which is what ``numpyro.infer.Predictive`` uses.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from . import quadrature as q
from .model_inputs import (  # noqa: F401 (re-exported)
    DELTA_SCALE, EFFECT_SPREAD_SCALE, GAMMA_SCALE, SEGMENT_LEVEL_SCALE, Cells, ConversionCells, CovariateCells,
    PriorArrays, SegmentCells, prior_arrays,
)
from .quadrature import cell_log_likelihood  # noqa: F401 (re-exported)


S_MAX = 50.0  # sd of the per-user log-rate beyond which the density is 0 (see fixed_effects)


class SoftplusExponential(dist.Exponential):
    """Exponential(rate), sampled in u with s = softplus(u) = log(1 + e^u) instead of s = e^u.

    The density of s is unchanged (NumPyro adds the Jacobian of the transform its support
    names); only the sampler's coordinates differ. With few users the posterior of s has a
    long upper tail where the likelihood falls like -c s², which in u = log s is -c e^(2u):
    curvature that grows without bound, so a step size adapted to the bulk diverged there
    (17 of 24 experiments of 10 users per arm at target acceptance 0.9). With s = softplus(u)
    the tail is -c u² (s ~ u for large u) and near 0 it behaves as before (s ~ e^u); 1 of
    the same 24 diverged.
    """

    support = constraints.softplus_positive


def fixed_effects(prior: PriorArrays):
    """Sample beta0, beta (one per treatment arm) and s; return them with beta padded by the control's 0.

    The sampler moves in ``log_mean0 = beta0 + s²/2`` (the log of the control's
    mean count) instead of beta0. Data pin down the mean, not beta0 and s apart,
    so in (beta0, s) the posterior is a curved ridge beta0 = const - s²/2 on which
    NUTS diverges when counts are sparse. The shear (beta0, s) -> (log_mean0, s)
    has unit Jacobian and the prior stays on beta0 (the factor below swaps the
    auxiliary Normal for it), so the model is unchanged: this is a
    reparameterisation, not a new prior.
    """
    s = numpyro.sample("s", SoftplusExponential(prior.s_rate))
    beta0_prior = dist.Normal(prior.beta0_loc, prior.beta0_scale)
    log_mean0 = numpyro.sample("log_mean0", beta0_prior)
    beta0 = numpyro.deterministic("beta0", log_mean0 - 0.5 * s**2)
    numpyro.factor("beta0_prior", beta0_prior.log_prob(beta0) - beta0_prior.log_prob(log_mean0))
    # The support ends at s = S_MAX (the prior's mass beyond it is exp(-rate * 50), 2e-22 at rate 1:
    # the model is unchanged for any real population). Without the bound, a long early warmup step
    # could land at s ~ 1e9, where beta0 = log_mean0 - s^2/2 loses every digit and the density came
    # out -inf in energy; NUTS accepted that as a free move and the chain never moved again.
    inside = (s <= S_MAX) & jnp.isfinite(beta0) & jnp.isfinite(log_mean0)
    numpyro.factor("support", jnp.where(inside, 0.0, -jnp.inf))
    with numpyro.plate("treatments", prior.beta_scale.shape[0]):
        beta = numpyro.sample("beta", dist.Normal(0.0, prior.beta_scale))
    beta_full = jnp.concatenate([jnp.zeros(1, beta.dtype), beta])
    return beta0, beta_full, s


class PoissonLogNormal(dist.Distribution):
    """y ~ Poisson(exp(loc + r)), r ~ Normal(0, scale), with r integrated out.

    ``log_prob`` is the adaptive Gauss-Hermite marginal (:mod:`glmm_model.quadrature`)
    on the rule given by ``x`` / ``log_wx``; ``sample`` draws r then y.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.nonnegative_integer
    pytree_data_fields = ("loc", "scale", "x", "log_wx")

    def __init__(self, loc, scale, x, log_wx, *, validate_args=None):
        self.loc, self.scale = jnp.broadcast_arrays(loc, scale)
        self.x, self.log_wx = x, log_wx
        super().__init__(batch_shape=jnp.shape(self.loc), validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        k1, k2 = jax.random.split(key)
        shape = sample_shape + self.batch_shape
        r = self.scale * jax.random.normal(k1, shape)
        return jax.random.poisson(k2, jnp.exp(self.loc + r), shape)

    def log_prob(self, value):
        return q.log_marginal_rule(value, self.loc, self.scale, self.x, self.log_wx)


def collapsed_model(cells: Cells, prior: PriorArrays, cv_count=None, covariate: CovariateCells | None = None):
    """Collapsed GLMM over histogram cells; ``cv_count=None`` draws one user's count per cell.

    ``cv_count``, when given, is the observed counts (``cells.cv_count``). Each cell's
    log-likelihood is multiplied by its number of users (``weight``); padding cells have
    weight 0 and contribute nothing. ``covariate``: the cells' :class:`CovariateCells`, or
    None for the model without the pre-period.
    """
    beta0, beta_full, s = fixed_effects(prior)
    eta = beta0 + beta_full[cells.arm] + cells.log_exposure
    if covariate is not None:
        gamma = numpyro.sample("gamma", dist.Normal(0.0, GAMMA_SCALE))
        delta = numpyro.sample("delta", dist.Normal(0.0, DELTA_SCALE))
        eta = eta + gamma * covariate.pre + delta * covariate.no_history
    observe_cells(cells, eta, s, cv_count)


def observe_cells(cells: Cells, eta, s, cv_count) -> None:
    """The cells given their linear predictor: drawn (``cv_count`` None, on the default rule) or
    observed, weighted (:func:`.quadrature.cells_log_likelihood`)."""
    if cv_count is None:
        x, log_wx = q.hermite_rule(q.DEFAULT_NODES)
        with numpyro.plate("cells", cells.arm.shape[0]):
            numpyro.sample("cv_count", PoissonLogNormal(eta, s, x, log_wx))
    else:
        numpyro.factor("cv_count", q.cells_log_likelihood(eta, s, cv_count, cells.weight, cells.log_factorial,
                                                           cells.starts))


def segment_effects(beta_full, se2):
    """The segment models' shared part: levels a[k] and effect deviations b[k, g] (control column
    0), with ``segment_beta`` recorded.

    b[k, g] ~ Normal(0, effect_spread[g]) is sampled partially centred: x ~ Normal(0, spread^c),
    b = spread^(1 - c) x, with c = spread^2 / (spread^2 + se2[k, g]) at the current spread
    (se2: the segment's squared standard error of its effect, from its data). Given the spread,
    b's distribution is Normal(0, spread) whatever c is, so c may follow the spread: centred
    (c -> 1) where the segment's data pin b down more than the spread does, non-centred (c -> 0)
    where the spread is the narrower, the choice of Papaspiliopoulos, Roberts and Skold (2007)
    for a Normal likelihood at each point. With a fixed c, NUTS diverged in one regime or the
    other (alike segments: spread near 0, a funnel; distinct ones: the inverse funnel).
    """
    n_segments, n_treatments = se2.shape
    with numpyro.plate("treatment_spread", n_treatments):
        spread = numpyro.sample("effect_spread", dist.HalfNormal(EFFECT_SPREAD_SCALE))
    a = numpyro.sample("segment_level", dist.Normal(0.0, SEGMENT_LEVEL_SCALE).expand([n_segments]).to_event(1))
    var = spread[None, :] ** 2
    c = var / (var + se2)
    x = numpyro.sample("x_segment_effect", dist.Normal(0.0, spread[None, :] ** c).to_event(2))
    b = spread[None, :] ** (1.0 - c) * x
    numpyro.deterministic("segment_beta", beta_full[None, 1:] + b)
    return a, jnp.concatenate([jnp.zeros((n_segments, 1), b.dtype), b], axis=1)


def segment_model(cells: Cells, segments: SegmentCells, prior: PriorArrays, cv_count=None):
    """Segments with partial pooling: y ~ arm + (1 + arm | segment) + (1 | user), collapsed over cells.

    For a user of segment k in arm g:

        log mu_i = beta0 + beta[g] + a[k] + b[k, g] + r_i (+ log exposure_i),   b[k, 0] = 0
        a[k]    ~ Normal(0, 1)
        b[k, g] ~ Normal(0, effect_spread[g]),  effect_spread ~ HalfNormal(0.25)  per treatment

    ``beta[g]`` is the effect of a typical segment; ``segment_beta[k, g] = beta[g] + b[k, g]`` is
    segment k's (shrunk towards beta[g] as much as the spread's posterior says); ``effect_spread``
    is the heterogeneity answer. A segment's level a[k] is a nuisance with a fixed prior around
    beta0, not a learned spread: with a few segments of alike base rates a learned spread goes to
    0, a funnel NUTS could not cross (67 divergences of 1,200 draws with two alike segments), and
    each segment's own users pin its level down. Its effect's deviation is partially centred as
    :func:`segment_effects` says.
    """
    beta0, beta_full, s = fixed_effects(prior)
    a, b_full = segment_effects(beta_full, segments.effect_variance)
    k = segments.segment
    observe_cells(cells, beta0 + beta_full[cells.arm] + a[k] + b_full[k, cells.arm] + cells.log_exposure, s, cv_count)


def latent_model(arm, log_exposure, prior: PriorArrays, cv_count=None):
    """The article's latent form: one r_i ~ Normal(0, s) per user, y_i ~ Poisson(exp(...))."""
    beta0, beta_full, s = fixed_effects(prior)
    with numpyro.plate("users", arm.shape[0]):
        r = numpyro.sample("r", dist.Normal(0.0, s))
        mu = jnp.exp(beta0 + beta_full[arm] + r + log_exposure)
        numpyro.sample("cv_count", dist.Poisson(mu), obs=cv_count)


def conversion_model(cells: ConversionCells, prior: PriorArrays, cv_count=None):
    """Bernoulli with a logit link per arm over (arm, converted) cells; ``cv_count=None`` draws one user per cell."""
    beta0, beta_full = conversion_effects(prior)
    _conversion_cells(beta0 + beta_full[cells.arm], cells, cv_count)


def segment_conversion_model(cells: ConversionCells, segment, effect_variance, prior: PriorArrays, cv_count=None):
    """Segments of a conversion metric, partially pooled as in :func:`segment_model`, on the log-odds:

        logit p = beta0 + beta[g] + a[k] + b[k, g]

    ``segment`` is each cell's segment (padded like the cells), ``effect_variance`` K x T (see
    :func:`segment_effects`)."""
    beta0, beta_full = conversion_effects(prior)
    a, b_full = segment_effects(beta_full, effect_variance)
    _conversion_cells(beta0 + beta_full[cells.arm] + a[segment] + b_full[segment, cells.arm], cells, cv_count)


def conversion_effects(prior: PriorArrays):
    """beta0 (the control's log-odds) and (0, beta...) of the conversion models."""
    beta0 = numpyro.sample("beta0", dist.Normal(prior.beta0_loc, prior.beta0_scale))
    with numpyro.plate("treatments", prior.beta_scale.shape[0]):
        beta = numpyro.sample("beta", dist.Normal(0.0, prior.beta_scale))
    return beta0, jnp.concatenate([jnp.zeros(1, beta.dtype), beta])


def _conversion_cells(logits, cells: ConversionCells, cv_count):
    with numpyro.plate("cells", cells.arm.shape[0]):
        d = dist.BernoulliLogits(logits)
        if cv_count is None:
            numpyro.sample("cv_count", d)
        else:
            numpyro.factor("cv_count", jnp.where(cells.weight > 0, cells.weight * d.log_prob(cv_count), 0.0))
