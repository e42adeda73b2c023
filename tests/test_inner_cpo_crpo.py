"""CPO and CRPO as inner solvers on real batches: agreement with TRPO where the constraint is
irrelevant, recovery when infeasible, CRPO's switch at limit + tolerance, differentiable steps."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from safemeta.algorithms.inner.base import episode_cost_advantages
from safemeta.algorithms.inner.cpo import CPO, CPOConfig
from safemeta.algorithms.inner.crpo import CRPO, CRPOConfig
from safemeta.algorithms.inner.trpo import TRPO, TRPOConfig
from safemeta.errors import UserError
from safemeta.model import stacked_theta
from safemeta.trainer import MetaTrainer


@pytest.fixture
def parts(rollout):
    return rollout(16)


def test_cpo_with_a_slack_constraint_takes_the_trpo_step(parts):
    t, batch = parts
    params = stacked_theta(t.meta, 3)
    cpo, trpo = CPO(CPOConfig(max_kl=0.01), t.actor), TRPO(TRPOConfig(max_kl=0.01), t.actor)
    slack = cpo.init_state(3, 1e6)  # b = J_C - d very negative: case 3 (the whole trust region is feasible)
    new_cpo, _, info = cpo.step(params, batch, slack)
    new_trpo, _, _ = trpo.step(params, batch, trpo.init_state(3, 1e6))
    assert info["case"].tolist() == [3.0, 3.0, 3.0]
    for k in new_cpo:
        torch.testing.assert_close(new_cpo[k], new_trpo[k], atol=1e-6, rtol=1e-5)


def test_cpo_recovery_step_decreases_cost_surrogate(parts):
    t, batch = parts
    batch = replace(batch, ep_cost=torch.full((3,), 50.0))  # far over the limit
    cpo = CPO(CPOConfig(max_kl=0.01), t.actor)
    params = stacked_theta(t.meta, 3)
    new, _, info = cpo.step(params, batch, cpo.init_state(3, 1.0))
    adv_c = episode_cost_advantages(batch)
    with torch.no_grad():
        change = cpo.surrogate(new, batch, adv_c) - cpo.surrogate(params, batch, adv_c)
    assert info["case"].tolist() == [0.0, 0.0, 0.0]
    assert bool((change < 0).all()), change
    assert bool((info["kl"] <= 0.01 + 1e-6).all())


def test_cpo_differentiable_step_keeps_the_graph(parts):
    t, batch = parts
    cpo = CPO(CPOConfig(max_kl=0.01), t.actor)
    theta = {k: v.detach().clone().requires_grad_(True) for k, v in t.meta.theta.items()}
    params = {k: v.unsqueeze(0).expand(3, *v.shape) for k, v in theta.items()}
    new, _, info = cpo.step(params, batch, cpo.init_state(3, 1.0), differentiable=True)
    out = sum((v * torch.randn_like(v)).sum() for v in new.values())
    grads = torch.autograd.grad(out, list(theta.values()))
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)


def test_cpo_layer_backends_need_the_euclidean_metric(parts):
    t, _ = parts
    with pytest.raises(UserError, match="metric=euclidean"):
        CPO(CPOConfig(backend="qpth", metric="fisher"), t.actor)
    CPO(CPOConfig(backend="qpth", metric="euclidean"), t.actor)


def test_crpo_switches_to_the_cost_step_exactly_above_limit_plus_tolerance(parts):
    t, batch = parts
    crpo = CRPO(CRPOConfig(tolerance=0.5), t.actor)
    limit = 1.0
    batch = replace(batch, ep_cost=torch.tensor([1.49, 1.5, 1.51]))
    state = crpo.init_state(3, limit)
    params = stacked_theta(t.meta, 3)
    new, _, info = crpo.step(params, batch, state)
    assert info["cost_step"].tolist() == [0.0, 0.0, 1.0]
    from safemeta.algorithms.inner.base import normalize
    with torch.no_grad():
        d_r = crpo.surrogate(new, batch, normalize(batch.adv_r)) - crpo.surrogate(params, batch, normalize(batch.adv_r))
        d_c = crpo.surrogate(new, batch, normalize(batch.adv_c)) - crpo.surrogate(params, batch, normalize(batch.adv_c))
    assert bool((d_r[:2] > 0).all()) and float(d_c[2]) < 0


def test_crpo_per_task_step_size_from_outside(parts):
    t, batch = parts
    crpo = CRPO(CRPOConfig(max_kl=10.0), t.actor)
    params = stacked_theta(t.meta, 3)
    small, _, _ = crpo.step(params, batch, crpo.init_state(3, 1e6, step_size=torch.tensor([0.01, 0.01, 0.01])))
    mixed, _, _ = crpo.step(params, batch, crpo.init_state(3, 1e6, step_size=torch.tensor([0.01, 0.02, 0.01])))
    dist = lambda p: sum(((p[k] - params[k]) ** 2).reshape(3, -1).sum(1) for k in p).sqrt()  # noqa: E731
    ratio = dist(mixed) / dist(small)
    torch.testing.assert_close(ratio, torch.tensor([1.0, 2.0, 1.0]), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("inner", ["cpo", "crpo"])
def test_solver_learns_point_circle_and_holds_cost_near_the_limit(inner, make_config):
    """Each task's own policy, 40 inner steps on 4 training tasks; then the final policies are evaluated
    on fresh episodes (16 per task) against the random initial policy.

    Both solvers converge to the constraint boundary and, at this budget, end above d = 25 on average
    (measured: cpo 27-29; crpo 23-31 before the env float-rounding changes of 11b1a03, 42.6 after them,
    with one of the 4 tasks at 77: CRPO's last iterate oscillates around the boundary), so this asserts
    learning and a cost held near the limit, within 2 d (an unconstrained TRPO policy pays 150-300 here,
    see leaderboards/point-circle.md), not J_C <= d: ending strictly within the limit is still open (issue 5)."""
    import safemeta

    cfg = safemeta.resolve_config([("t", {"env": "point-circle", "inner": inner, "algo": "pretrained"})])
    t = MetaTrainer(cfg)
    tasks = t.family.sample(4, "train", np.random.default_rng(0))
    venv = t.family.make(tasks, 4, "cpu", 0)
    res = t.adapter.adapt(stacked_theta(t.meta, 4), venv, 40, t.inner.init_state(4, t.family.cost_limit),
                          t.meta.critics_for(4), 1, torch.Generator().manual_seed(0), final_rollout=False)
    eval_venv = t.family.make(tasks, 16, "cpu", 1)
    final = t.adapter.collector.collect(res.params[-1], eval_venv, 1, torch.Generator().manual_seed(1))
    start = t.adapter.collector.collect(res.params[0], eval_venv, 1, torch.Generator().manual_seed(1))
    ret, cost = float(final.ep_return.mean()), float(final.ep_cost.mean())
    assert ret > max(10 * float(start.ep_return.mean()), 20.0), (ret, float(start.ep_return.mean()))
    assert cost <= 2.0 * t.family.cost_limit, (inner, cost, final.ep_cost.tolist())
