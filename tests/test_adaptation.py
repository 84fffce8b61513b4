"""The warmup whose length and target acceptance are program inputs adapts exactly as NumPyro's own."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer.hmc_util import IntegratorState, build_adaptation_schedule, warmup_adapter

from glmm_model import adaptation


def _adapt(update, init_state, zs, accept_probs):
    def step(state, t_z_a):
        t, z, a = t_z_a
        state = update(t, a, IntegratorState(z, None, None, None), state)
        return state, state

    steps = jnp.arange(len(accept_probs))
    return jax.jit(lambda s: jax.lax.scan(step, s, (steps, zs, accept_probs))[1])(init_state)


@pytest.mark.parametrize("num_warmup, target_accept, dense_mass", [
    (12, 0.8, True),  # under 20 iterations: one window
    (150, 0.9, True),  # Stan's buffers shrunk to fit
    (1000, 0.95, False),  # the refit's warmup: slow windows doubling, a diagonal mass matrix
    (300, 0.99, [("a",), ("b", "c")]),  # blocks, as the latent path's dense block over the fixed effects
])
def test_the_run_time_warmup_matches_numpyros_step_for_step(num_warmup, target_accept, dense_mass):
    rng = np.random.default_rng(num_warmup)
    if isinstance(dense_mass, list):
        zs = {"a": jnp.asarray(rng.normal(size=(num_warmup, 2))), "b": jnp.asarray(rng.normal(size=(num_warmup,))),
              "c": jnp.asarray(rng.normal(size=(num_warmup, 3)))}
        z0 = {k: v[0] for k, v in zs.items()}
    else:
        zs = jnp.asarray(rng.normal(size=(num_warmup, 4)) * [1.0, 2.0, 0.5, 3.0])
        z0 = zs[0]
    accept_probs = jnp.asarray(rng.uniform(0.3, 1.0, size=num_warmup))
    init, numpyro_update = warmup_adapter(num_warmup, dense_mass=dense_mass, target_accept_prob=target_accept)
    state = init(IntegratorState(z0, None, None, None), jax.random.PRNGKey(1), 1.0)
    inputs = adaptation.warmup_inputs(num_warmup, target_accept)
    expected = _adapt(numpyro_update, state, zs, accept_probs)
    got = _adapt(adaptation.update_fn(inputs, dense_mass), state, zs, accept_probs)
    assert int(got.window_idx[-1]) == int(inputs.num_windows)  # every window was passed
    for e, g in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(e))  # bit for bit, at every iteration
    assert float(got.step_size[-1]) != float(got.step_size[-2])  # the last step takes the averaged step size


def test_the_schedule_is_numpyros():
    for n in [*range(0, 400), 499, 500, 1000, 2000, 4000, 5000, 12345, 100_000]:
        assert adaptation.adaptation_schedule(n) == [tuple(w) for w in build_adaptation_schedule(n)], n


def test_a_warmup_that_needs_too_many_windows_is_refused():
    inputs = adaptation.warmup_inputs(100_000, 0.9)
    assert inputs.schedule.shape == (adaptation.MAX_WINDOWS, 2) and int(inputs.num_windows) < adaptation.MAX_WINDOWS
    with pytest.raises(ValueError, match="adaptation windows"):
        adaptation.warmup_inputs(2**40, 0.9)
