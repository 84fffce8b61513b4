"""From posterior draws to the numbers an experimenter decides on.

Pure numpy on draws, no sampler and no warehouse: each function takes
arrays and returns plain rows, so golden-value tests can feed a hand-made posterior.

Definitions (k: a treatment arm, c: the control; all per unit of exposure, i.e.
per user when no exposure is given):

* expected count per user in arm g: ``exp(beta0 + beta_g + s²/2)``, the mean of
  the lognormal-Poisson rate. A conversion metric: the probability of converting,
  ``p_g = logit^-1(beta0 + beta_g)``.
* relative lift ``exp(beta_k) - 1`` (ratio of arm means minus one; a conversion
  metric: ``p_k / p_c - 1``); absolute lift ``expected_k - expected_c``.
* a guardrail with a tolerated relative drop d: ``prob_drop_beyond_tolerance = P(lift < -d)``.
* ``prob_beat_control = P(lift > 0)``;
  ``expected_loss_ship = E[max(0, -lift)]`` (relative lift given up if we ship and
  the treatment is worse); ``expected_loss_keep = E[max(0, lift)]``;
  ``prob_in_rope = P(|lift| < rope_half_width)``.
Intervals are equal-tailed at ``ci_level``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import chdtrc

from . import diagnostics
from .config import DecisionRules

POSTERIOR_PARAMETERS = ("beta0", "beta", "s", "gamma", "delta")


def interval(draws: np.ndarray, level: float, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Equal-tailed posterior interval."""
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail], axis=axis)
    return low, high


def _columns(values: np.ndarray, variants: tuple[str, ...]):
    """(variant, (chain, draw) array) for each column of one parameter's draws."""
    if values.ndim == 3:
        return [(str(v), values[:, :, j]) for j, v in enumerate(variants)]
    return [(None, values)]


def posterior_summary(draws: dict, variants: tuple[str, ...], level: float) -> list[dict]:
    """One row per parameter (and per treatment variant for 'beta').

    ``draws``: parameter name -> (chain, draw) array, or (chain, draw, variant) for 'beta'.
    """
    rows = []
    for name in (p for p in POSTERIOR_PARAMETERS if p in draws):  # a conversion metric has no s
        for variant, by_chain in _columns(np.asarray(draws[name]), variants):
            d = by_chain.ravel()
            low, high = interval(d, level)
            rows.append(
                {
                    "parameter": name,
                    "variant": variant,
                    "mean": float(d.mean()),
                    "sd": float(d.std(ddof=1)) if d.size > 1 else 0.0,
                    "median": float(np.median(d)),
                    "ci_low": float(low),
                    "ci_high": float(high),
                    "mcse_mean": diagnostics.mcse_mean(by_chain),
                    "ess_bulk": diagnostics.ess_bulk(by_chain),
                    "ess_tail": diagnostics.ess_tail(by_chain),
                    "r_hat": diagnostics.r_hat(by_chain),
                }
            )
    return rows


@dataclass(frozen=True)
class Diagnostics:
    """Sampler health in numbers, and whether it passes the decision rules."""

    divergences: int
    max_r_hat: float
    min_ess_bulk: float
    min_ess_tail: float
    min_bfmi: float
    srm_p_value: float
    num_chains: int = 4
    stuck_chains: int = 0

    def failures(self, rules: DecisionRules) -> list[str]:
        """Human-readable reasons the posterior cannot be trusted (empty when healthy)."""
        out = []
        if self.stuck_chains:
            out.append(f"{self.stuck_chains} chain(s) did not move (stuck where warmup left them)")
        if self.divergences > rules.max_divergences:
            out.append(f"{self.divergences} divergent transitions")
        if not self.max_r_hat <= rules.max_r_hat:
            out.append(f"max R-hat {self.max_r_hat:.3f} > {rules.max_r_hat}")
        min_ess = rules.min_ess_per_chain * self.num_chains
        if not min(self.min_ess_bulk, self.min_ess_tail) >= min_ess:
            out.append(f"min ESS {min(self.min_ess_bulk, self.min_ess_tail):.0f} < {min_ess:.0f}")
        if not self.min_bfmi >= rules.min_bfmi:
            out.append(f"BFMI {self.min_bfmi:.2f} < {rules.min_bfmi}")
        if self.srm_p_value < rules.srm_p_value:
            out.append(f"sample ratio mismatch (p = {self.srm_p_value:.2g})")
        return out


def stuck_chains(draws: dict) -> int:
    """Chains whose kept draws never changed (every parameter constant) or hold non-finite values."""
    stuck = np.zeros(next(iter(draws.values())).shape[0], bool)
    moved = np.zeros_like(stuck)
    for values in draws.values():
        flat = np.asarray(values, float).reshape(values.shape[0], values.shape[1], -1)
        stuck |= ~np.isfinite(flat).all(axis=(1, 2))
        moved |= (np.ptp(flat, axis=1) > 0).any(axis=1)
    return int((stuck | ~moved).sum()) if flat.shape[1] > 1 else int(stuck.sum())


def sampler_diagnostics(stats: dict, summary_rows: list[dict], srm_p_value: float, draws: dict | None = None) -> Diagnostics:
    """``stats``: sampler statistics (chain, draw): ``diverging`` and ``energy``; ``draws`` (chain, draw, ...)
    name the chains that did not move."""
    energy = np.asarray(stats["energy"])
    bfmi = diagnostics.bfmi(energy) if energy.shape[1] > 1 else np.array([np.nan])
    return Diagnostics(
        divergences=int(np.asarray(stats["diverging"]).sum()),
        max_r_hat=float(np.nanmax([r["r_hat"] for r in summary_rows])),
        min_ess_bulk=float(np.nanmin([r["ess_bulk"] for r in summary_rows])),
        min_ess_tail=float(np.nanmin([r["ess_tail"] for r in summary_rows])),
        min_bfmi=float(np.nanmin(bfmi)) if np.isfinite(bfmi).any() else float("nan"),
        srm_p_value=srm_p_value,
        num_chains=int(energy.shape[0]),
        stuck_chains=stuck_chains(draws) if draws else 0,
    )


def srm_p_value(users_per_arm: np.ndarray, planned_split=None) -> float:
    """Chi-squared test of the observed users per arm against the planned split (equal unless given).

    ``planned_split``: one weight >= 0 per arm (normalised here). An arm planned at 0 that has
    users contradicts the plan outright: p = 0.
    """
    observed = np.asarray(users_per_arm, dtype=float)
    split = np.ones_like(observed) if planned_split is None else np.asarray(planned_split, dtype=float)
    if split.shape != observed.shape or np.any(split < 0) or not split.sum() > 0:
        raise ValueError(f"planned_split needs {observed.size} weights >= 0 with a positive sum, got {planned_split}")
    expected = observed.sum() * split / split.sum()
    if np.any((expected == 0) & (observed > 0)):
        return 0.0
    planned = expected > 0
    if planned.sum() < 2:
        return 1.0
    statistic = float(np.sum((observed[planned] - expected[planned]) ** 2 / expected[planned]))
    return float(chdtrc(planned.sum() - 1, statistic))


def split_check(variants: tuple[str, ...], users_per_arm: np.ndarray, planned_split) -> tuple[float, dict[str, float]]:
    """The sample-ratio p-value and the split it tested against (variant -> share).

    Without a plan, an equal split over the observed variants. With one, over every variant
    observed or planned: an observed variant the plan does not name is planned at 0 (p = 0),
    and a planned variant nobody was exposed to counts 0 users.
    """
    if planned_split is None:
        return srm_p_value(users_per_arm), {v: 1.0 / len(variants) for v in variants}
    plan = dict(planned_split)
    arms = list(variants) + sorted(set(plan) - set(variants))
    observed = np.concatenate([np.asarray(users_per_arm, float), np.zeros(len(arms) - len(variants))])
    return srm_p_value(observed, [plan.get(a, 0.0) for a in arms]), {a: plan.get(a, 0.0) for a in arms}


def decide(prob_beat: float, prob_in_rope: float, failures: list[str], rules: DecisionRules,
           treatments: int = 1) -> tuple[str, str]:
    """Decision label and the reason for it, for one of ``treatments`` arms compared with the control."""
    if failures:
        return "invalid", "; ".join(failures)
    threshold = rules.ship_threshold(treatments)
    if prob_beat >= threshold:
        adjusted = "" if threshold == rules.ship_probability else \
            f" ({rules.ship_probability} adjusted for {treatments} treatments)"
        return "ship", f"P(beat control) {prob_beat:.3f} >= {threshold:g}{adjusted}"
    if prob_beat <= 1.0 - rules.ship_probability:
        return "keep_control", f"P(beat control) {prob_beat:.3f} <= {1 - rules.ship_probability:.2f}"
    if prob_in_rope >= rules.rope_probability:
        return "keep_control", f"P(|lift| < {rules.rope_half_width:g}) {prob_in_rope:.3f} >= {rules.rope_probability}"
    return "inconclusive", f"P(beat control) {prob_beat:.3f} between thresholds"


def best_arm(beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """P(best) and the expected loss against the best, per arm (control first), from the joint draws.

    ``beta``: the log of each treatment's mean over the control's (draws, treatments).
    Arm k's mean is the control's times ``exp(beta_k)`` (the control's ratio is 1), so over
    draws: P(best_k) = P(ratio_k is the largest) and the expected loss of choosing k is
    E[max_j ratio_j - ratio_k], in units of the control's mean (the relative lift given up). With
    one treatment they are P(beat control) and the expected loss of shipping (or of keeping).
    """
    ratios = np.concatenate([np.ones((beta.shape[0], 1)), np.exp(beta)], axis=1)
    best = ratios.max(axis=1, keepdims=True)
    prob_best = np.bincount(ratios.argmax(axis=1), minlength=ratios.shape[1]) / ratios.shape[0]
    return prob_best, (best - ratios).mean(axis=0)


def lift_rows(
    beta0: np.ndarray,
    beta: np.ndarray,
    s: np.ndarray,
    variants: tuple[str, ...],
    users_per_arm: np.ndarray,
    observed_mean: np.ndarray,
    level: float,
    rules: DecisionRules,
    failures: list[str],
    observed_rate: np.ndarray | None = None,
    metric_type: str = "count",
    tolerated_drop: float | None = None,
) -> list[dict]:
    """One row per treatment arm against the control (arm 0). ``beta`` is (draws, treatments).
    ``observed_rate``: counts per unit of exposure per arm (``observed_mean`` when none is used).
    A conversion metric (``s`` unused): ``beta0`` and ``beta`` are log-odds."""
    observed_rate = observed_mean if observed_rate is None else observed_rate
    beta = np.asarray(beta).reshape(len(beta0), -1)
    if metric_type == "conversion":
        log_base = -np.logaddexp(0.0, -beta0)  # log p_control
        beta = -np.logaddexp(0.0, -(beta0[:, None] + beta)) - log_base[:, None]  # log(p_k / p_control)
    else:
        log_base = beta0 + 0.5 * s**2
    expected_control = np.exp(log_base)
    ec_low, ec_high = interval(expected_control, level)
    prob_best, loss_vs_best = best_arm(beta)
    rows = []
    for j, variant in enumerate(variants[1:]):
        expected = np.exp(log_base + beta[:, j])
        e_low, e_high = interval(expected, level)
        lift = np.expm1(beta[:, j])
        l_low, l_high = interval(lift, level)
        absolute = expected - expected_control
        a_low, a_high = interval(absolute, level)
        prob_beat = float(np.mean(lift > 0))
        prob_in_rope = float(np.mean(np.abs(lift) < rules.rope_half_width))
        decision, reason = decide(prob_beat, prob_in_rope, failures, rules, len(variants) - 1)
        rows.append(
            {
                "variant": variant,
                "control_variant": variants[0],
                "n_users": int(users_per_arm[j + 1]),
                "n_users_control": int(users_per_arm[0]),
                "observed_mean": float(observed_mean[j + 1]),
                "observed_mean_control": float(observed_mean[0]),
                "observed_rate": float(observed_rate[j + 1]),
                "observed_rate_control": float(observed_rate[0]),
                "expected_count_mean": float(expected.mean()),
                "expected_count_low": float(e_low),
                "expected_count_high": float(e_high),
                "expected_count_control_mean": float(expected_control.mean()),
                "expected_count_control_low": float(ec_low),
                "expected_count_control_high": float(ec_high),
                "relative_lift_mean": float(lift.mean()),
                "relative_lift_median": float(np.median(lift)),
                "relative_lift_low": float(l_low),
                "relative_lift_high": float(l_high),
                "absolute_lift_mean": float(absolute.mean()),
                "absolute_lift_low": float(a_low),
                "absolute_lift_high": float(a_high),
                "prob_beat_control": prob_beat,
                "expected_loss_ship": float(np.mean(np.maximum(0.0, -lift))),
                "expected_loss_keep": float(np.mean(np.maximum(0.0, lift))),
                "prob_in_rope": prob_in_rope,
                "prob_best": float(prob_best[j + 1]),
                "expected_loss_vs_best": float(loss_vs_best[j + 1]),
                "prob_best_control": float(prob_best[0]),
                "expected_loss_vs_best_control": float(loss_vs_best[0]),
                "decision": decision,
                "decision_reason": reason,
                "tolerated_drop": tolerated_drop,
                "prob_drop_beyond_tolerance": None if tolerated_drop is None else float(np.mean(lift < -tolerated_drop)),
            }
        )
    return rows
