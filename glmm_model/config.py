"""Typed, immutable configuration of a fit: priors, sampler settings, decision rules."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

Method = Literal["collapsed", "latent"]
PriorPreset = Literal["default", "article"]
# count: events per user (Poisson GLMM); conversion: did the user do it at least once (Bernoulli, logit
# link per arm); ratio: numerator events per denominator event (the count model with the denominator
# as its exposure)
MetricType = Literal["count", "conversion", "ratio"]
METRIC_TYPES = ("count", "conversion", "ratio")


@dataclass(frozen=True)
class Priors:
    """Priors on the log scale.

    ``beta0 ~ Normal(beta0_loc, beta0_scale)``, where ``beta0_loc=None`` means
    "centre on the log of the pooled observed rate" (sum of counts / sum of exposure,
    with half a count added so an all-zero experiment still has a finite centre).
    That centring is what makes the default independent of the unit of the counts:
    a metric averaging 0.02 per user and one averaging 300 get the same prior
    relative to their own scale. ``beta_g ~ Normal(0, beta_scale)`` for each
    treatment arm (a relative lift); ``s ~ Exponential(s_rate)``, the sd of the
    per-user log-rate, already unit-free.
    """

    beta0_loc: float | None = None
    beta0_scale: float = 2.5
    beta_scale: float = 1.0
    s_rate: float = 1.0
    preset: PriorPreset = "default"

    @classmethod
    def from_preset(cls, name: str) -> "Priors":
        if name == "default":
            return cls()
        if name == "article":
            # The source article: beta0 ~ N(0,1), beta1 ~ N(0,1), s ~ Exponential(1).
            return cls(beta0_loc=0.0, beta0_scale=1.0, beta_scale=1.0, s_rate=1.0, preset="article")
        raise ValueError(f"unknown prior preset {name!r}: expected 'default' or 'article'")


@dataclass(frozen=True)
class SamplerConfig:
    """NUTS settings. Chains, warmup and draws default to the article's: 4 x (500 + 2000).

    ``target_accept`` is 0.9 rather than NumPyro's 0.8: with sparse counts (0.02
    per user) the posterior bends near s -> 0 and 0.8 left the odd divergent
    transition, which labels a result 'invalid'; 0.9 removed them for ~5% more time.

    ``dense_mass``: adapt a full mass matrix (beta0, beta and s stay correlated even
    after the reparameterisation). On the article's data it halved the leapfrog
    steps per draw and doubled the ESS; on the latent path it is a matrix over every
    user's r_i, so there it is a dense block over the fixed effects and diagonal for r.
    """

    num_chains: int = 4
    num_warmup: int = 500
    num_samples: int = 2000
    target_accept: float = 0.9
    max_tree_depth: int = 10
    dense_mass: bool = True
    seed: int = 42
    progress_bar: bool | None = None  # None: on when stderr is a terminal
    time_limit_s: float | None = None  # sampling stops (FitTimeout) this long after its first, compiling, chunk
    # On divergent transitions, fit again with each (target acceptance, warmup multiplier) in turn;
    # () never refits. The last attempt's settings are the ones recorded.
    divergence_refits: tuple[tuple[float, int], ...] = ((0.95, 2), (0.99, 4))


@dataclass(frozen=True)
class DecisionRules:
    """Thresholds that turn a posterior into a decision label.

    'invalid' whenever a diagnostic check fails (divergences, R-hat, ESS, BFMI,
    sample-ratio mismatch), whatever the lift says. Otherwise 'ship' when
    P(beat control) >= the ship threshold, 'keep_control' when
    P(beat control) <= 1 - ship_probability or P(in ROPE) >= rope_probability,
    and 'inconclusive' in between.

    The ship threshold is ``ship_probability`` with one treatment. With m > 1
    treatments and ``adjust_for_arms`` it is ``1 - (1 - ship_probability) / m``
    (Bonferroni): each arm compared with the control is another chance to ship a
    change that does nothing, and in an A/A test with 3 arms the unadjusted 0.95
    shipped some arm about 9% of the time. Adjusted, the chance that an
    experiment with no effect ships anything stays at most 1 - ship_probability.
    """

    ship_probability: float = 0.95
    adjust_for_arms: bool = True
    rope_half_width: float = 0.01  # relative lift: |exp(beta) - 1| < 1%
    rope_probability: float = 0.95
    max_r_hat: float = 1.01
    min_ess_per_chain: float = 100.0  # Vehtari et al. (2021): 400 for 4 chains
    max_divergences: int = 0
    min_bfmi: float = 0.3
    srm_p_value: float = 0.001

    def ship_threshold(self, treatments: int) -> float:
        """P(beat control) an arm needs to ship, out of ``treatments`` compared with the control."""
        if not self.adjust_for_arms or treatments <= 1:
            return self.ship_probability
        return 1.0 - (1.0 - self.ship_probability) / treatments


@dataclass(frozen=True)
class FitConfig:
    """Everything a fit needs besides the data."""

    method: Method = "collapsed"
    priors: Priors = field(default_factory=Priors)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    decision: DecisionRules = field(default_factory=DecisionRules)
    ci_level: float = 0.95  # equal-tailed posterior intervals
    # variant -> planned share of traffic (any positive weights; normalised and kept as sorted
    # (variant, share) pairs); None = an equal split over the variants observed
    planned_split: Mapping[str, float] | tuple[tuple[str, float], ...] | None = None
    ppc_draws: int = 400  # thinned posterior draws used by the predictive check
    metric_type: MetricType = "count"
    # a guardrail's tolerated relative drop (0.02: 2%); the lift then reports P(lift < -tolerated_drop)
    tolerated_drop: float | None = None
    # use the input's pre_cv_count column (the metric's count before first exposure) as a covariate
    covariate: bool = True
    # pre-period counts are grouped into at most this many bins (each its own bin while there are
    # no more distinct counts): the cells, and so the fit's cost, stay bounded
    pre_period_bins: int = 8

    def __post_init__(self) -> None:
        if self.method not in ("collapsed", "latent"):
            raise ValueError(f"method must be 'collapsed' or 'latent', got {self.method!r}")
        if not 0.5 < self.ci_level < 1:
            raise ValueError(f"ci_level must be in (0.5, 1), got {self.ci_level}")
        if self.sampler.num_chains < 1 or self.sampler.num_samples < 1 or self.sampler.num_warmup < 0:
            raise ValueError("num_chains and num_samples must be >= 1, num_warmup >= 0")
        if not 0 <= self.sampler.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {self.sampler.seed}")
        if self.planned_split is not None:
            object.__setattr__(self, "planned_split", normalise_split(self.planned_split))
        if self.metric_type not in METRIC_TYPES:
            raise ValueError(f"metric_type must be one of {', '.join(METRIC_TYPES)}, got {self.metric_type!r}")
        if self.metric_type == "conversion" and self.method == "latent":
            raise ValueError("a conversion metric has no per-user intercept to sample: use method 'collapsed'")
        if self.tolerated_drop is not None and not 0 <= self.tolerated_drop < 1:
            raise ValueError(f"tolerated_drop is a relative drop in [0, 1), got {self.tolerated_drop}")
        if self.pre_period_bins < 2:
            raise ValueError(f"pre_period_bins must be >= 2, got {self.pre_period_bins}")
        if self.sampler.time_limit_s is not None and not self.sampler.time_limit_s > 0:
            raise ValueError(f"time_limit_s must be > 0 seconds or None, got {self.sampler.time_limit_s}")

    def with_(self, **changes) -> "FitConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


def normalise_split(split) -> tuple[tuple[str, float], ...]:
    """A planned traffic split as sorted ``(variant, share)`` pairs whose shares sum to 1.

    ``split``: a mapping or pairs of variant -> weight; weights are any finite positive numbers
    (``{"control": 9, "treatment": 1}`` is a 90/10 split). ValueError names what is wrong.
    """
    pairs = list(split.items()) if isinstance(split, Mapping) else [tuple(p) for p in split]
    if not pairs:
        raise ValueError("planned_split is empty: name the variants and their weights")
    names = [str(variant) for variant, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"planned_split names a variant twice: {sorted(names)}")
    weights = []
    for variant, weight in pairs:
        try:
            value = float(weight)
        except (TypeError, ValueError):
            raise ValueError(f"planned_split weight of {variant!r} is not a number: {weight!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"planned_split weight of {variant!r} must be a finite number > 0, got {weight!r}")
        weights.append(value)
    total = sum(weights)
    return tuple(sorted((name, weight / total) for name, weight in zip(names, weights)))
