"""How much the pre-period covariate narrowed the treatment effect: ``covariate_sd_ratio``.

The ratio compares beta's posterior sd in the model with the covariate against the
same data without it (cells merged over the pre-period bins). Both posteriors are
taken in their Laplace approximation, so its error cancels in the ratio and no
second NUTS run is needed: the mode of the log posterior in
theta = (log_mean0, beta, log s[, gamma, delta]) by BFGS on the analytic gradient, the
Hessian there by central differences of that gradient with steps scaled by the NUTS
posterior sds, and
sd(beta) = sqrt(diag(H^-1)). Both log posteriors use the collapsed likelihood the
sampler uses (:func:`.quadrature.log_marginal_tiered_grad`) and the model's priors.

With many users the posterior is close to Normal and the approximation is close to
the sd NUTS reports; ``tests/benchmarks/pre_period.py`` prints both ratios side by side.
"""
from __future__ import annotations

import numpy as np

from . import quadrature as q
from .data import ExperimentData
from .model_inputs import DELTA_SCALE, GAMMA_SCALE, PriorArrays


def _normal_logpdf(x, loc, scale):
    return -0.5 * ((x - loc) / scale) ** 2 - np.log(scale)


def _log_posterior(theta: np.ndarray, data: ExperimentData, prior: PriorArrays,
                   with_covariate: bool) -> tuple[float, np.ndarray]:
    """The log posterior at theta = (log_mean0, beta..., log s[, gamma, delta]) and its gradient
    (chain rule through eta and s over :func:`.quadrature.log_marginal_tiered_grad`)."""
    k = data.num_arms - 1
    log_mean0, beta, u = theta[0], theta[1:1 + k], theta[1 + k]
    s = np.exp(u)
    beta0 = log_mean0 - 0.5 * s * s
    eta = beta0 + np.concatenate([[0.0], beta])[data.cell_arm] + np.log(data.cell_exposure)
    beta0_z = (beta0 - prior.beta0_loc) / prior.beta0_scale**2
    lp = (_normal_logpdf(beta0, prior.beta0_loc, prior.beta0_scale)
          + _normal_logpdf(beta, 0.0, prior.beta_scale).sum()
          + np.log(prior.s_rate) - prior.s_rate * s + u)
    if with_covariate:
        gamma, delta = theta[2 + k], theta[3 + k]
        eta = eta + gamma * data.cell_pre + delta * data.cell_no_history
        lp += _normal_logpdf(gamma, 0.0, GAMMA_SCALE) + _normal_logpdf(delta, 0.0, DELTA_SCALE)
    log_l, d_eta, d_s = q.log_marginal_tiered_grad(data.cell_count.astype(float), eta, np.full(eta.shape, s))
    users = data.cell_users.astype(float)
    total = lp + float((users * log_l).sum())
    g_eta, g_s = users * d_eta, float((users * d_s).sum())
    grad = np.empty(len(theta))
    grad[0] = g_eta.sum() - beta0_z
    grad[1:1 + k] = np.bincount(data.cell_arm, weights=g_eta, minlength=k + 1)[1:] - beta / prior.beta_scale**2
    grad[1 + k] = (g_eta.sum() - beta0_z) * -s * s + g_s * s - prior.s_rate * s + 1.0
    if with_covariate:
        grad[2 + k] = (g_eta * data.cell_pre).sum() - gamma / GAMMA_SCALE**2
        grad[3 + k] = (g_eta * data.cell_no_history).sum() - delta / DELTA_SCALE**2
    if not (np.isfinite(total) and np.isfinite(grad).all()):
        return -1e300, np.zeros(len(theta))
    return total, grad


def laplace_beta_sd(data: ExperimentData, prior: PriorArrays, start: np.ndarray, scale: np.ndarray,
                    with_covariate: bool) -> np.ndarray:
    """sd of each treatment's beta in the Laplace approximation, from ``start`` (length of theta).

    ``scale`` is each coordinate's rough posterior sd (NUTS's): BFGS runs in theta standardised
    by it, where the curvature is near the identity it starts from, and the Hessian at the mode
    is the central difference of the analytic gradient with steps of 0.1 x ``scale``. With
    numerical gradients in raw theta, this took ~450 log posterior evaluations per pre-period
    pair (~0.5-0.9 s); it now takes a few dozen.
    """
    from scipy import optimize  # here, not at import: 0.4-0.6 s that a fit without a pre-period never needs

    def neg(z):
        value, grad = _log_posterior(start + scale * z, data, prior, with_covariate)
        return -value, -grad * scale

    z_mode = optimize.minimize(neg, np.zeros(len(start)), jac=True, method="BFGS", options={"gtol": 1e-6}).x
    d = len(start)
    hessian = np.empty((d, d))  # in z
    h = 0.1
    for i in range(d):
        step = np.zeros(d)
        step[i] = h
        hessian[:, i] = (neg(z_mode + step)[1] - neg(z_mode - step)[1]) / (2.0 * h)
    hessian = 0.5 * (hessian + hessian.T)
    cov = np.linalg.inv(hessian) * np.outer(scale, scale)
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
    scale = np.array([max(c.std(), 1e-3) for c in columns])
    n = len(start) - 2
    try:
        with_sd = laplace_beta_sd(data, prior, start, scale, True)
        without_sd = laplace_beta_sd(data.without_covariate(), prior, start[:n], scale[:n], False)
    except np.linalg.LinAlgError:
        return float("nan")
    ratio = with_sd / without_sd
    return float(ratio.mean()) if np.isfinite(ratio).all() else float("nan")
