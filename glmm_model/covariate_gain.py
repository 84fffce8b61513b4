"""How much the pre-period covariate narrowed the treatment effect: ``covariate_sd_ratio``.

The ratio compares beta's posterior sd in the model with the covariate against the
same data without it (cells merged over the pre-period bins). Both posteriors are
taken in their Laplace approximation, so its error cancels in the ratio and no
second NUTS run is needed: the mode of the log posterior in
theta = (log_mean0, beta, log s[, gamma, delta]) by BFGS, the Hessian there by
central differences with steps scaled by the NUTS posterior sds, and
sd(beta) = sqrt(diag(H^-1)). Both log posteriors use the collapsed likelihood the
sampler uses (:func:`.quadrature.log_marginal_tiered`) and the model's priors.

With many users the posterior is close to Normal and the approximation is close to
the sd NUTS reports; ``tests/benchmarks/pre_period.py`` prints both ratios side by side.
"""
from __future__ import annotations

import numpy as np
from scipy import optimize

from . import quadrature as q
from .data import ExperimentData
from .model_inputs import DELTA_SCALE, GAMMA_SCALE, PriorArrays


def _normal_logpdf(x, loc, scale):
    return -0.5 * ((x - loc) / scale) ** 2 - np.log(scale)


def _log_posterior(theta: np.ndarray, data: ExperimentData, prior: PriorArrays, with_covariate: bool) -> float:
    k = data.num_arms - 1
    log_mean0, beta, u = theta[0], theta[1:1 + k], theta[1 + k]
    s = np.exp(u)
    beta0 = log_mean0 - 0.5 * s * s
    eta = beta0 + np.concatenate([[0.0], beta])[data.cell_arm] + np.log(data.cell_exposure)
    lp = (_normal_logpdf(beta0, prior.beta0_loc, prior.beta0_scale)
          + _normal_logpdf(beta, 0.0, prior.beta_scale).sum()
          + np.log(prior.s_rate) - prior.s_rate * s + u)
    if with_covariate:
        gamma, delta = theta[2 + k], theta[3 + k]
        eta = eta + gamma * data.cell_pre + delta * data.cell_no_history
        lp += _normal_logpdf(gamma, 0.0, GAMMA_SCALE) + _normal_logpdf(delta, 0.0, DELTA_SCALE)
    log_l = q.log_marginal_tiered(data.cell_count.astype(float), eta, np.full(eta.shape, s))
    total = lp + float((data.cell_users * log_l).sum())
    return total if np.isfinite(total) else -1e300


def laplace_beta_sd(data: ExperimentData, prior: PriorArrays, start: np.ndarray, step: np.ndarray,
                    with_covariate: bool) -> np.ndarray:
    """sd of each treatment's beta in the Laplace approximation, from ``start`` (length of theta)."""
    def neg(theta):
        return -_log_posterior(theta, data, prior, with_covariate)

    mode = optimize.minimize(neg, start, method="BFGS", options={"gtol": 1e-6}).x
    d = len(mode)
    hessian = np.empty((d, d))
    for i in range(d):
        for j in range(i, d):
            total = 0.0
            for si, sj, sign in ((1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1)):
                x = mode.copy()
                x[i] += si * step[i]
                x[j] += sj * step[j]
                total += sign * neg(x)
            hessian[i, j] = hessian[j, i] = total / (4.0 * step[i] * step[j])
    cov = np.linalg.inv(hessian)
    k = data.num_arms - 1
    return np.sqrt(np.diag(cov)[1:1 + k])


def covariate_sd_ratio(data: ExperimentData, prior: PriorArrays, draws: dict) -> float:
    """Mean over treatments of sd(beta | with the covariate) / sd(beta | without it); NaN when the
    approximation fails (a Hessian that is not positive definite)."""
    s = draws["s"].ravel()
    beta = draws["beta"].reshape(-1, data.num_arms - 1)
    log_mean0 = draws["beta0"].ravel() + 0.5 * s * s
    columns = [log_mean0, *beta.T, np.log(s), draws["gamma"].ravel(), draws["delta"].ravel()]
    start = np.array([c.mean() for c in columns])
    step = np.array([max(0.1 * c.std(), 1e-4) for c in columns])
    n = len(start) - 2
    try:
        with_sd = laplace_beta_sd(data, prior, start, step, True)
        without_sd = laplace_beta_sd(data.without_covariate(), prior, start[:n], step[:n], False)
    except np.linalg.LinAlgError:
        return float("nan")
    ratio = with_sd / without_sd
    return float(ratio.mean()) if np.isfinite(ratio).all() else float("nan")
