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
  contribute one term scaled by their number. Cells come in count tiers, each
  with its own quadrature rule and padded to a fixed size (padding has weight 0),
  so one compiled program serves every experiment of similar size.

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
from .model_inputs import DELTA_SCALE, GAMMA_SCALE, CellTier, ConversionCells, PriorArrays, cell_tiers, prior_arrays  # noqa: F401 (re-exported)


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


def collapsed_model(tiers: tuple[CellTier, ...], prior: PriorArrays, cv_count=None, covariate=None):
    """Collapsed GLMM over histogram cells; ``cv_count=None`` draws one user's count per cell.

    ``cv_count``, when given, is a tuple with one array per tier (the observed counts).
    Each cell's log-likelihood is multiplied by its number of users (``weight``);
    padding cells have weight 0 and contribute nothing. ``covariate``: one
    :class:`CovariateTier` per tier, or None for the model without the pre-period.
    """
    beta0, beta_full, s = fixed_effects(prior)
    if covariate is not None:
        gamma = numpyro.sample("gamma", dist.Normal(0.0, GAMMA_SCALE))
        delta = numpyro.sample("delta", dist.Normal(0.0, DELTA_SCALE))
    for t, tier in enumerate(tiers):
        obs = None if cv_count is None else cv_count[t]
        eta = beta0 + beta_full[tier.arm] + tier.log_exposure
        if covariate is not None:
            eta = eta + gamma * covariate[t].pre + delta * covariate[t].no_history
        with numpyro.plate(f"cells_{t}", tier.arm.shape[0]):
            d = PoissonLogNormal(eta, s, tier.x, tier.log_wx)
            if obs is None:
                numpyro.sample(f"cv_count_{t}", d)
            else:
                numpyro.factor(f"cv_count_{t}", cell_log_likelihood(d.log_prob(obs), tier.weight))


def latent_model(arm, log_exposure, prior: PriorArrays, cv_count=None):
    """The article's latent form: one r_i ~ Normal(0, s) per user, y_i ~ Poisson(exp(...))."""
    beta0, beta_full, s = fixed_effects(prior)
    with numpyro.plate("users", arm.shape[0]):
        r = numpyro.sample("r", dist.Normal(0.0, s))
        mu = jnp.exp(beta0 + beta_full[arm] + r + log_exposure)
        numpyro.sample("cv_count", dist.Poisson(mu), obs=cv_count)


def conversion_model(cells: ConversionCells, prior: PriorArrays, cv_count=None):
    """Bernoulli with a logit link per arm over (arm, converted) cells; ``cv_count=None`` draws one user per cell."""
    beta0 = numpyro.sample("beta0", dist.Normal(prior.beta0_loc, prior.beta0_scale))
    with numpyro.plate("treatments", prior.beta_scale.shape[0]):
        beta = numpyro.sample("beta", dist.Normal(0.0, prior.beta_scale))
    beta_full = jnp.concatenate([jnp.zeros(1, beta.dtype), beta])
    with numpyro.plate("cells", cells.arm.shape[0]):
        d = dist.BernoulliLogits(beta0 + beta_full[cells.arm])
        if cv_count is None:
            numpyro.sample("cv_count", d)
        else:
            numpyro.factor("cv_count", jnp.where(cells.weight > 0, cells.weight * d.log_prob(cv_count), 0.0))
