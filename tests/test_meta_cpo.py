"""Meta-CPO (`dco_cpo`): the K = 2 meta-gradient through differentiable CPO steps against central finite
differences of the post-adaptation objective with the rollouts held fixed, for every backend; the
backends agree with each other; the meta step respects its trust region and linearized constraint."""
from dataclasses import fields, replace

import numpy as np
import pytest
import torch

from safemeta.adaptation import AdaptationResult, replay
from safemeta.algorithms.outer.dco_cpo import meta_gradients, post_adaptation_objectives
from safemeta.model import stacked_theta
from safemeta.params import flat, stack, unflat
from safemeta.trainer import MetaTrainer

K, M = 2, 2
BACKENDS = [("analytic", "fisher"), ("analytic", "euclidean"), ("cvxpylayers", "euclidean"), ("qpth", "euclidean")]
# the Fisher path two ways: CG solves differentiated implicitly (exact for a converged CG: 200 iterations here)
# and by backpropagating through 10 CG iterations (the gradient of exactly the function evaluated)
FISHER = {"implicit": {"cg_grad": "implicit", "cg_iters": 200}, "unrolled": {"cg_grad": "unrolled", "cg_iters": 10}}


def _double(batch):
    return replace(batch, **{f.name: getattr(batch, f.name).double() for f in fields(batch)
                             if getattr(batch, f.name) is not None and getattr(batch, f.name).is_floating_point()})


def _trainer(make_config, backend="analytic", metric="fisher", cost_limit=None, cg=None, **outer):
    env_cfg = {} if cost_limit is None else {"env_cfg": {"tiny-nav": {"cost_limit": cost_limit}}}
    # init_log_std -0.5: the meta-gradient is of a piecewise-smooth function (each line search's accepted
    # fraction is piecewise constant in theta); at the default std 1 this fixture's theta sits at a backtracking
    # boundary of one Fisher step (fraction 0 at theta, 0.044 at theta + 1e-5 v), where central differences
    # straddle the jump. The test checks the gradient away from kinks.
    cfg = make_config(algo="meta_cpo", policy={"hidden_sizes": [8], "init_log_std": -0.5},
                      trainer={"tasks_per_iter": M, "adapt_steps": K, "envs_per_task": 4},
                      inner_cfg={"cpo": {"backend": backend, "metric": metric, "max_kl": 0.02, **(cg or {})}},
                      outer_cfg={"dco_cpo": {"metric": "euclidean", **outer}}, **env_cfg)
    return MetaTrainer(cfg)


@pytest.fixture(scope="module")
def fixed_rollouts(tmp_path_factory):
    """K + 1 batches of M tiny-nav tasks collected by one real adaptation, in float64, and theta."""
    from conftest import tiny_config

    t = _trainer(lambda **o: tiny_config(tmp_path_factory.mktemp("mc"), **o))
    venv = t.family.make(t.family.sample(M, "train", np.random.default_rng(3)), 4, "cpu", 3)
    state = t.inner.init_state(M, t.family.cost_limit_for("train"))
    result = t.adapter.adapt(stacked_theta(t.meta, M), venv, K, state, t.meta.critics_for(M), 1,
                             torch.Generator().manual_seed(3))
    theta = {k: v.detach().double() for k, v in t.meta.theta.items()}
    return t, [_double(b) for b in result.batches], state, theta


def _post_adaptation(t, theta, batches, state, differentiable):
    phi = replay(t.inner, stack(theta, M), batches[:K], dict(state), differentiable=differentiable)
    return phi, post_adaptation_objectives(t.inner, phi, batches[K], state)


def _meta_grads(t, theta, batches, state):
    theta = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
    phi, _ = _post_adaptation(t, theta, batches, state, differentiable=True)
    result = AdaptationResult([stack(theta, M), phi], batches, state, None)
    return meta_gradients(t.inner, theta, result)


@pytest.mark.parametrize("backend,metric,cg", [(b, m, c) for b, m in BACKENDS for c in (FISHER if m == "fisher" else [None])])
def test_meta_gradient_matches_finite_differences(fixed_rollouts, make_config, backend, metric, cg):
    base, batches, state, theta = fixed_rollouts
    t = _trainer(make_config, backend, metric, cg=FISHER.get(cg))
    grad_f, grad_g, _, _ = _meta_grads(t, theta, batches, state)
    theta1 = stack(theta, 1)
    gen = torch.Generator().manual_seed(0)
    eps = 1e-5
    for _ in range(3):
        v = torch.randn(grad_f.shape, dtype=torch.float64, generator=gen)
        vals = []
        for sign in (1, -1):
            moved = {k: x[0] for k, x in unflat(flat(theta1) + sign * eps * v, theta1).items()}
            with torch.no_grad():
                _, (f, g) = _post_adaptation(t, moved, batches, state, differentiable=False)
            vals.append((f.mean(), g.mean()))
        fd_f = (vals[0][0] - vals[1][0]) / (2 * eps)
        fd_g = (vals[0][1] - vals[1][1]) / (2 * eps)
        torch.testing.assert_close((grad_f * v).sum(), fd_f, rtol=2e-3, atol=1e-6)
        torch.testing.assert_close((grad_g * v).sum(), fd_g, rtol=2e-3, atol=1e-5)


def test_full_meta_gradient_is_not_the_first_order_one(fixed_rollouts, make_config):
    """The Jacobian of K CPO steps matters: full and first-order meta-gradients differ."""
    _, batches, state, theta = fixed_rollouts
    t = _trainer(make_config)
    full_f, _, _, _ = _meta_grads(t, theta, batches, state)
    phi, _ = _post_adaptation(t, theta, batches, state, differentiable=False)
    result = AdaptationResult([stack(theta, M), phi], batches, state, None)
    fo_f, _, _, _ = meta_gradients(t.inner, theta, result, first_order=True)
    cos = (full_f * fo_f).sum() / (full_f.norm() * fo_f.norm())
    assert float((full_f - fo_f).norm()) > 1e-3 * float(full_f.norm()), float(cos)


def test_backends_agree_on_the_meta_gradient(fixed_rollouts, make_config):
    _, batches, state, theta = fixed_rollouts
    grads = {b: _meta_grads(_trainer(make_config, b, "euclidean"), theta, batches, state)[:2]
             for b, m in BACKENDS if m == "euclidean"}
    for backend in ("cvxpylayers", "qpth"):
        for mine, ref in zip(grads[backend], grads["analytic"]):
            torch.testing.assert_close(mine, ref, rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("cost_limit,paid,cases", [(1e6, None, {3, 4}), (0.0, None, {1, 2}), (0.0, 50.0, {0})])
def test_meta_step_respects_trust_region_and_linearized_constraint(make_config, cost_limit, paid, cases):
    """A slack limit (constraint inactive), a tight one reachable within the trust region (the dual
    solution on the linearized boundary) and, with the post-adaptation cost set far over it, one that
    is not (the eq. 4 recovery step)."""
    delta = 5e-3
    t = _trainer(make_config, cost_limit=cost_limit, max_kl=delta, replay_line_search=False)
    before = flat(stack({k: v.detach().clone() for k, v in t.meta.theta.items()}, 1))
    captured = {}
    original = t.outer.update

    def spy(result, tasks):
        if paid is not None:
            result.batches[-1] = replace(result.batches[-1], ep_cost=torch.full((M,), paid))
        captured.update(zip(("f", "g", "F", "G"), meta_gradients(t.inner, t.meta.theta, result)))
        return original(result, tasks)

    t.outer.update = spy
    m = t.train_iteration()
    step = flat(stack({k: v.detach() for k, v in t.meta.theta.items()}, 1)) - before
    assert m["meta/case"] in cases and m["meta/step_fraction"] == 1.0
    assert 0.5 * float((step**2).sum()) <= delta * (1 + 1e-4)  # Euclidean trust region of eq. 12
    linear_change = float((captured["g"] * step).sum())
    if m["meta/case"] == 0:
        assert linear_change < 0  # eq. 4: the recovery step only lowers G
    else:
        assert float(captured["G"]) + linear_change <= 1e-4 * abs(float(captured["G"])) + 1e-6
        assert float((captured["f"] * step).sum()) > 0  # and ascends F
