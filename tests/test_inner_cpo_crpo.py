"""CPO and CRPO as inner solvers on real batches: agreement with TRPO where the constraint is
irrelevant, recovery when infeasible, CRPO's switch at limit + tolerance, differentiable steps."""
from dataclasses import replace

import pytest
import torch

from tests.conftest import assert_solver_ends_within_d_on_point_circle
from safemeta.algorithms.inner.base import episode_cost_advantages
from safemeta.algorithms.inner.cpo import CPO, CPOConfig
from safemeta.algorithms.inner.crpo import CRPO, CRPOConfig
from safemeta.algorithms.inner.trpo import TRPO, TRPOConfig
from safemeta.errors import UserError
from safemeta.training.model import stacked_theta


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
@pytest.mark.parametrize("inner", ["cpo", "crpo", "trpolag"])
def test_solver_ends_within_the_cost_limit_on_point_circle(inner):
    """Each task's own policy, 40 inner steps on 4 training tasks (8 episodes per step), then the policy
    the solver hands out is evaluated on 16 fresh episodes per task: true J_C <= d = 25 on average over
    the tasks, and a return far above the random initial policy's (about 0).

    With CPO's cost shaping (Achiam et al. 2017 Sec. 6.3, H = 10) and the output rule of CRPO's
    Algorithm 1 (the latest iterate estimated feasible) for every solver. Without them cpo and crpo end
    around or above d; ``benchmarks/final_cost.py`` runs this protocol over seeds and with / without
    each (its tables in benchmarks/README.md, "Where the inner solvers end")."""
    assert_solver_ends_within_d_on_point_circle(inner, steps=40)


def test_crpo_outputs_the_latest_iterate_of_n0(parts):
    """Algorithm 1's output: per task the latest w_t whose batch estimate was within d + eta (N_0), the
    last iterate where N_0 is empty; ``output: last`` (and every other solver) hands out w_T."""
    from safemeta.training.adaptation import AdaptationResult

    t, batch = parts
    params = [{k: torch.full((3, *v.shape), float(i)) for k, v in t.meta.theta.items()} for i in range(4)]
    costs = [[0.5, 3.0, 3.0], [3.0, 1.4, 3.0], [0.1, 3.0, 3.0]]  # J of w_0, w_1, w_2 per task; w_3 has no batch
    batches = [replace(batch, ep_cost=torch.tensor(c)) for c in costs]
    crpo = CRPO(CRPOConfig(tolerance=0.5), t.actor)
    state = crpo.init_state(3, 1.0)
    result = AdaptationResult(params, batches, state, t.meta.critics_for(3))

    def picked(out):  # which w_i each task got: every entry of w_i is i
        return next(iter(out.values())).reshape(3, -1)[:, 0].tolist()

    assert picked(crpo.output(result)) == [2.0, 1.0, 3.0]  # task 0: w_2 (latest of w_0, w_2); 1: w_1; 2: none, w_3
    assert picked(CRPO(CRPOConfig(tolerance=0.5, output="last"), t.actor).output(result)) == [3.0, 3.0, 3.0]
    assert CPO(CPOConfig(), t.actor).output(result) is params[-1]
    # with the rollout after the last step, w_3 is judged too (task 2: J = 0.2 puts it in N_0)
    with_final = AdaptationResult(params, [*batches, replace(batch, ep_cost=torch.tensor([9.0, 0.2, 0.2]))],
                                  state, t.meta.critics_for(3))
    assert picked(crpo.output(with_final)) == [2.0, 3.0, 3.0]


def test_cpo_cost_gradient_per_step_is_the_episode_gradient_over_the_episode_length(parts):
    """``cost_gradient: step`` (OmniSafe's units) is the default step on cost advantages divided by L,
    the env steps per episode; with the constraint near the boundary the two differ."""
    t, batch = parts
    params = stacked_theta(t.meta, 3)
    steps_per_episode = (batch.rew[0].numel() / batch.ep_count).reshape(-1, 1, 1)
    near = CPO(CPOConfig(), t.actor).init_state(3, batch.ep_cost + 0.05)  # b = -0.05: the cost constraint binds
    per_step = CPO(CPOConfig(cost_gradient="step"), t.actor)
    episode = CPO(CPOConfig(), t.actor)
    new_step, _, _ = per_step.step(params, batch, near)
    new_scaled, _, _ = episode.step(params, replace(batch, adv_c=batch.adv_c / steps_per_episode), near)
    new_episode, _, _ = episode.step(params, batch, near)
    for k in new_step:
        torch.testing.assert_close(new_step[k], new_scaled[k], atol=1e-6, rtol=1e-5)
    assert max(float((new_step[k] - new_episode[k]).abs().max()) for k in new_step) > 1e-4
