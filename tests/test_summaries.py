"""Golden values for lift, P(beat control), expected loss, ROPE and the decision, on a hand-made posterior."""
import math

import numpy as np
import pytest
from scipy import stats

from glmm_model.config import DecisionRules
from glmm_model.summaries import Diagnostics, best_arm, decide, lift_rows, srm_p_value

# Four posterior draws, chosen so every number below can be worked out by hand.
BETA0 = np.full(4, math.log(2.0))  # control mean exp(beta0 + s²/2) = 2 with s = 0
S = np.zeros(4)
BETA = np.array([[-0.1], [0.05], [0.2], [0.4]])
# lift = exp(beta) - 1 = [-0.0951626, 0.0512711, 0.2214028, 0.4918247]


def rows(rules=DecisionRules(rope_half_width=0.06), failures=()):
    return lift_rows(BETA0, BETA, S, ("A", "B"), np.array([100, 98]), np.array([1.9, 2.3]), 0.5, rules, list(failures))


def test_lift_golden_values():
    (r,) = rows()
    assert r["relative_lift_mean"] == pytest.approx((-0.0951626 + 0.0512711 + 0.2214028 + 0.4918247) / 4, abs=1e-6)
    assert r["relative_lift_median"] == pytest.approx((0.0512711 + 0.2214028) / 2, abs=1e-6)
    assert r["prob_beat_control"] == 0.75
    assert r["expected_loss_ship"] == pytest.approx(0.0951626 / 4, abs=1e-6)
    assert r["expected_loss_keep"] == pytest.approx((0.0512711 + 0.2214028 + 0.4918247) / 4, abs=1e-6)
    assert r["prob_in_rope"] == 0.25  # only 0.0513 lies within ±0.06
    assert r["expected_count_control_mean"] == pytest.approx(2.0)
    assert (r["observed_rate"], r["observed_rate_control"]) == (2.3, 1.9)  # no exposure: per user
    assert r["absolute_lift_mean"] == pytest.approx(2.0 * 0.16733400, abs=1e-6)
    # 50% equal-tailed interval = 25% and 75% quantiles (numpy's linear interpolation)
    assert r["relative_lift_low"] == pytest.approx(-0.0951626 + 0.75 * (0.0512711 + 0.0951626), abs=1e-6)
    assert r["relative_lift_high"] == pytest.approx(0.2214028 + 0.25 * (0.4918247 - 0.2214028), abs=1e-6)
    assert (r["n_users"], r["n_users_control"], r["observed_mean"]) == (98, 100, 2.3)
    assert r["decision"] == "inconclusive"


def test_expected_count_includes_the_lognormal_variance_term():
    s = np.full(4, 0.5)
    (r,) = lift_rows(BETA0, BETA, s, ("A", "B"), np.array([1, 1]), np.array([0, 0]), 0.5, DecisionRules(), [])
    assert r["expected_count_control_mean"] == pytest.approx(2.0 * math.exp(0.125))


def test_failed_diagnostics_make_every_decision_invalid_whatever_the_lift():
    big = lift_rows(BETA0, BETA + 5, S, ("A", "B"), np.array([1, 1]), np.array([0, 0]), 0.5, DecisionRules(), ["2 divergent transitions"])
    assert big[0]["prob_beat_control"] == 1.0
    assert big[0]["decision"] == "invalid"
    assert "divergent" in big[0]["decision_reason"]


@pytest.mark.parametrize(
    "prob_beat, prob_rope, expected",
    [(0.96, 0.0, "ship"), (0.95, 0.0, "ship"), (0.04, 0.0, "keep_control"), (0.5, 0.97, "keep_control"), (0.5, 0.5, "inconclusive")],
)
def test_decision_thresholds(prob_beat, prob_rope, expected):
    assert decide(prob_beat, prob_rope, [], DecisionRules())[0] == expected


def test_ship_threshold_is_adjusted_for_the_number_of_treatments():
    rules = DecisionRules()
    assert rules.ship_threshold(1) == 0.95
    assert rules.ship_threshold(2) == pytest.approx(0.975)
    assert rules.ship_threshold(4) == pytest.approx(0.9875)
    assert DecisionRules(adjust_for_arms=False).ship_threshold(3) == 0.95
    assert decide(0.96, 0.0, [], rules, treatments=1)[0] == "ship"
    decision, reason = decide(0.96, 0.0, [], rules, treatments=2)
    assert decision == "inconclusive"
    decision, reason = decide(0.98, 0.0, [], rules, treatments=2)
    assert decision == "ship" and "0.975" in reason and "adjusted for 2 treatments" in reason
    # keeping the control is not a discovery: its threshold stays at 1 - ship_probability
    assert decide(0.04, 0.0, [], rules, treatments=3)[0] == "keep_control"


def test_lift_rows_of_three_arms_use_the_adjusted_threshold():
    draws = np.random.default_rng(3).normal(size=(4000, 2))
    # arm B: P(beat) ~ 0.96 (ships alone, not beside a second treatment); arm C: ~0.99
    beta = np.stack([0.1 * draws[:, 0] + 0.1 * 1.75, 0.1 * draws[:, 1] + 0.1 * 2.4], axis=1)
    zeros = np.zeros(len(beta))
    rows = lift_rows(zeros, beta, zeros + 0.5, ("A", "B", "C"), np.array([1, 1, 1]), np.zeros(3), 0.95,
                     DecisionRules(), [])
    assert 0.95 < rows[0]["prob_beat_control"] < 0.975 and rows[0]["decision"] == "inconclusive"
    assert rows[1]["prob_beat_control"] > 0.975 and rows[1]["decision"] == "ship"
    (two_arm,) = lift_rows(zeros, beta[:, :1], zeros + 0.5, ("A", "B"), np.array([1, 1]), np.zeros(2), 0.95,
                           DecisionRules(), [])
    assert two_arm["decision"] == "ship"


def test_diagnostic_failures_name_the_problem():
    rules = DecisionRules()
    ok = Diagnostics(divergences=0, max_r_hat=1.001, min_ess_bulk=900, min_ess_tail=800, min_bfmi=0.9, srm_p_value=0.4, num_chains=4)
    assert ok.failures(rules) == []
    bad = Diagnostics(divergences=3, max_r_hat=1.2, min_ess_bulk=50, min_ess_tail=800, min_bfmi=0.1, srm_p_value=1e-6, num_chains=4)
    reasons = " | ".join(bad.failures(rules))
    for word in ("3 divergent", "R-hat 1.200", "ESS 50 < 400", "BFMI 0.10", "sample ratio mismatch"):
        assert word in reasons
    nan = Diagnostics(divergences=0, max_r_hat=float("nan"), min_ess_bulk=900, min_ess_tail=900, min_bfmi=0.9, srm_p_value=0.5, num_chains=4)
    assert nan.failures(rules), "a NaN R-hat must not pass"


def test_srm_against_equal_and_planned_split():
    assert srm_p_value(np.array([500, 500])) == pytest.approx(1.0)
    assert srm_p_value(np.array([550, 450])) == pytest.approx(stats.chi2.sf(10.0, 1))
    # 600/400 is exactly the planned 60/40 split
    assert srm_p_value(np.array([600, 400]), (0.6, 0.4)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="planned_split"):
        srm_p_value(np.array([1, 2, 3]), (0.5, 0.5))
    # three arms, uneven plan: scipy's chi-squared test is the reference
    observed, split = np.array([310, 395, 295]), (0.3, 0.4, 0.3)
    expected = observed.sum() * np.array(split)
    assert srm_p_value(observed, split) == pytest.approx(stats.chisquare(observed, expected).pvalue, rel=1e-12)


def test_prob_best_and_expected_loss_against_the_best_golden_values():
    """Three arms, four joint draws. Ratios to the control, exp(beta):
    draw 0: 1, 1.1052, 0.8187 -> B best;  draw 1: 1, 0.9048, 1.3499 -> C best;
    draw 2: 1, 1.2214, 1.1052 -> B best;  draw 3: 1, 0.7408, 0.9048 -> control best."""
    beta = np.array([[0.1, -0.2], [-0.1, 0.3], [0.2, 0.1], [-0.3, -0.1]])
    prob_best, loss = best_arm(beta)
    assert prob_best.tolist() == [0.25, 0.5, 0.25]
    # E[max ratio - ratio_k]: (0.1052 + 0.3499 + 0.2214 + 0) / 4 for the control, and so on
    assert loss == pytest.approx([0.1691081, 0.1760508, 0.1244586], abs=1e-6)
    (b, c) = lift_rows(np.zeros(4), beta, np.zeros(4), ("A", "B", "C"), np.array([10, 10, 10]), np.ones(3), 0.5,
                       DecisionRules(), [])
    assert (b["prob_best"], c["prob_best"], b["prob_best_control"]) == (0.5, 0.25, 0.25)
    assert b["expected_loss_vs_best_control"] == c["expected_loss_vs_best_control"] == pytest.approx(0.1691081, abs=1e-6)


def test_with_one_treatment_best_arm_is_beat_control_and_loss_is_the_shipping_loss():
    (r,) = rows()
    assert r["prob_best"] == r["prob_beat_control"] and r["prob_best_control"] == 1 - r["prob_beat_control"]
    assert r["expected_loss_vs_best"] == pytest.approx(r["expected_loss_ship"])
    assert r["expected_loss_vs_best_control"] == pytest.approx(r["expected_loss_keep"])
