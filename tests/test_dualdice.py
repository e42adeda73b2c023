"""DualDICE against exact occupancy ratios on a tabular-gridworld task: the tabular estimate's error falls
as data grows (to under 5%), E_D[w] ~ 1, and the induced state weights are d_pi(s) / d_D(s)."""
import numpy as np
import pytest

from safemeta import registry
from safemeta.config.loader import resolve_config
from safemeta.dualdice import tabular_dualdice
from safemeta.tabular import occupancy, occupancy_ratio


@pytest.fixture(scope="module")
def problem():
    cfg = resolve_config([("t", {"env": "tabular-gridworld"})])
    family = registry.env.get("tabular-gridworld")(cfg.env_params)
    cmdp = family.cmdp(family.sample(1, "train", np.random.default_rng(0))[0])
    rng = np.random.default_rng(1)
    behaviour = rng.dirichlet(np.full(cmdp.n_actions, 3.0), size=cmdp.n_states)  # broad data policy
    target = rng.dirichlet(np.full(cmdp.n_actions, 0.7), size=cmdp.n_states)  # a different, peakier policy
    d_data = occupancy(cmdp, behaviour)
    return cmdp, target, d_data, occupancy_ratio(cmdp, target, d_data)


def _sample(cmdp, d_data, n, seed):
    """n transitions (s, a) ~ d_D, s' ~ P(.|s, a), and n initial states s0 ~ mu0."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(d_data.size, size=n, p=d_data.ravel() / d_data.sum())
    s, a = np.divmod(flat, cmdp.n_actions)
    cdf = cmdp.P[s, a].cumsum(-1)
    s_next = np.minimum((rng.uniform(size=(n, 1)) > cdf).sum(-1), cmdp.n_states - 1)
    s0 = rng.choice(cmdp.n_states, size=n, p=cmdp.mu0)
    return s, a, s_next, s0


def _error(w, truth, d_data):
    """E_D |w_hat - w| / E_D w (a relative L1 error under the data distribution)."""
    return float((d_data * np.abs(w - truth)).sum() / (d_data * truth).sum())


def test_tabular_ratios_converge_to_the_exact_ones(problem):
    cmdp, target, d_data, truth = problem
    errors = []
    for n in (3_000, 30_000, 300_000):
        est = tabular_dualdice(cmdp.n_states, cmdp.n_actions, *_sample(cmdp, d_data, n, n), target, cmdp.gamma)
        errors.append(_error(est.weights, truth, d_data))
    assert est.mean_weight == pytest.approx(1.0, abs=0.01)
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.05, errors
    # the induced state weights are d_pi(s) / d_D(s)
    d_pi_s, d_data_s = occupancy(cmdp, target).sum(1), d_data.sum(1)
    visited = d_data_s > 1e-3
    np.testing.assert_allclose(est.state_weights[visited], (d_pi_s / d_data_s)[visited], rtol=0.15, atol=0.05)
