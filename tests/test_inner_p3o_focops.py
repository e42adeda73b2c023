"""P3O and FOCOPS (algorithms/inner/p3o.py, focops.py): P3O's ReLU penalty and pessimistic cost clip on scalar
tensors, FOCOPS' per-sample weights and loss gradient by hand, nu's dual step, the per-task KL early stop, whole inner
steps on tiny-nav batches (gain, per-task independence) and, marked slow, each ending within d on point-circle."""
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.conftest import assert_solver_ends_within_d_on_point_circle, assert_task0_ignores_task1
from safemeta.algorithms.inner.focops import FOCOPS, FOCOPSConfig, focops_loss, focops_weights
from safemeta.algorithms.inner.p3o import P3O, P3OConfig, cost_clipped_surrogate, p3o_penalty
from safemeta.errors import UserError
from safemeta.rollout.policy import gaussian_kl, gaussian_log_prob
from safemeta.training.model import stacked_theta

SOLVERS = {"p3o": (P3O, P3OConfig), "focops": (FOCOPS, FOCOPSConfig)}
F64 = torch.float64


@pytest.fixture
def parts(rollout):
    return rollout(8)


# -- P3O's exact penalty (eq. 9/10) -------------------------------------------------------------------------------

@pytest.mark.parametrize("surrogate, violation, value, grad", [
    (0.3, -0.5, 0.0, 0.0),     # estimate within d: no penalty, no gradient
    (-0.2, -0.1, 0.0, 0.0),
    (0.3, -0.2, 2.0, 20.0),    # estimate 0.1 above d: kappa * 0.1, gradient kappa
    (-0.2, 0.5, 6.0, 20.0),    # J_C above d, the step's estimate lowering it but not enough
])
def test_p3o_penalty_is_active_only_above_the_limit(surrogate, violation, value, grad):
    s = torch.tensor(surrogate, dtype=F64, requires_grad=True)
    pen = p3o_penalty(s, torch.tensor(violation, dtype=F64), kappa=20.0)
    (g,) = torch.autograd.grad(pen, s)
    assert float(pen.detach()) == pytest.approx(value)
    assert float(g) == pytest.approx(grad)


@pytest.mark.parametrize("adv_c, ratio, grad", [
    (1.0, 0.5, 0.0),     # A_C > 0, r < 1 - eps: the pessimistic clip keeps 0.8 A_C, no gradient
    (-1.0, 1.5, 0.0),    # A_C < 0, r > 1 + eps: clip binds, no gradient
    (1.0, 1.5, 1.5),     # A_C > 0, r > 1 + eps: max keeps the unclipped r A_C (a cost increase is never cut off)
    (-1.0, 0.5, -0.5),
    (2.0, 1.1, 2.2),     # inside the range: A_C r
])
def test_p3o_cost_clip_is_pessimistic(adv_c, ratio, grad):
    logp_old = torch.tensor(-0.3, dtype=F64)
    logp = (logp_old + math.log(ratio)).clone().requires_grad_(True)
    v = cost_clipped_surrogate(logp, logp_old, torch.tensor(adv_c, dtype=F64), clip=0.2)
    (g,) = torch.autograd.grad(v, logp)
    assert float(g) == pytest.approx(grad, abs=1e-9)
    assert float(v.detach()) == pytest.approx(max(ratio * adv_c, min(max(ratio, 0.8), 1.2) * adv_c))


@pytest.mark.parametrize("violation, active", [(-0.5, False), (0.5, True)])
def test_p3o_objective_gradient_by_hand(violation, active):
    """Two tasks of one sample each, inside the clip range: d objective / d logp = r A_R - [active] kappa r A_C (the
    minibatch's mean A_C subtracted leaves the gradient as it is); the penalty's argument at r is r A_C - A_C + J_C - d."""
    solver = P3O(P3OConfig(kappa=20.0), actor=torch.nn.Linear(1, 1))
    ratio, adv_r, adv_c = 1.1, 0.7, 0.4
    logp_old = torch.full((1, 1), -0.3, dtype=F64)
    logp = (logp_old + math.log(ratio)).clone().requires_grad_(True)
    mb = {"logp_old": logp_old, "adv_r": torch.full((1, 1), adv_r, dtype=F64),
          "adv_c": torch.full((1, 1), adv_c, dtype=F64), "violation": torch.full((1, 1), violation, dtype=F64)}
    obj = solver.minibatch_objective(logp, None, None, mb, {})
    (g,) = torch.autograd.grad(obj.sum(), logp)
    arg = ratio * adv_c - adv_c + violation
    assert (arg > 0) == active
    assert float(obj.detach()) == pytest.approx(ratio * adv_r - 20.0 * max(arg, 0.0))
    assert float(g) == pytest.approx(ratio * adv_r - (20.0 * ratio * adv_c if active else 0.0))


# -- FOCOPS' per-sample weights and loss (eq. 8 / Algorithm 1) ------------------------------------------------------

def test_focops_weights_drop_states_past_delta():
    kl = torch.tensor([0.0, 0.01, 0.02, 0.0201, 0.5], requires_grad=True)
    w = focops_weights(kl, delta=0.02)
    assert w.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert not w.requires_grad  # the indicator is held fixed


def test_focops_loss_gradient_matches_a_hand_computation():
    """One task, three 1-D samples: KL(pi_theta || pi_old)[s] = log(s0/s1) + (s1^2 + (mu - mu0)^2) / (2 s0^2) - 1/2;
    d loss_i / d mu_i = w_i [ (mu_i - mu0_i) / s0^2 - (1/lambda) r_i (a_i - mu_i) / s1^2 (A_R - nu A_C) ], w_i = 0 for
    the sample whose KL exceeds delta. The old std differs from the new one so that the KL's direction matters."""
    lam, delta, nu = 1.5, 0.02, 0.5
    s1, s0 = 0.58, 0.6
    mu0 = torch.tensor([0.0, 0.0, 0.0], dtype=F64)
    mu = torch.tensor([0.05, -0.08, 0.4], dtype=F64, requires_grad=True)
    act = torch.tensor([0.3, -0.2, 0.1], dtype=F64)
    adv_r = torch.tensor([1.0, -0.5, 2.0], dtype=F64)
    adv_c = torch.tensor([0.2, 0.7, -1.0], dtype=F64)
    solver = FOCOPS(FOCOPSConfig(lam=lam, delta=delta), actor=torch.nn.Linear(1, 1))
    col = lambda x: x.reshape(1, 3, 1)  # noqa: E731
    ls1, ls0 = torch.full((1, 3, 1), math.log(s1), dtype=F64), torch.full((1, 3, 1), math.log(s0), dtype=F64)
    logp = gaussian_log_prob(col(act), col(mu), ls1)
    logp_old = gaussian_log_prob(col(act), col(mu0), ls0).detach()
    mb = {"logp_old": logp_old, "adv_r": adv_r.reshape(1, 3), "adv_c": adv_c.reshape(1, 3),
          "old_mean": col(mu0), "old_log_std": ls0}
    obj = solver.minibatch_objective(logp, col(mu), ls1, mb, {"lagrange": torch.tensor([nu])})
    (g,) = torch.autograd.grad(-obj.sum(), mu)

    m, a, m0 = mu.detach().numpy(), act.numpy(), mu0.numpy()
    kl = math.log(s0 / s1) + (s1 ** 2 + (m - m0) ** 2) / (2 * s0 ** 2) - 0.5
    w = (kl <= delta).astype(float)
    assert w.tolist() == [1.0, 1.0, 0.0]
    ratio = np.exp(logp.detach().numpy().ravel() - logp_old.numpy().ravel())
    expected = w * ((m - m0) / s0 ** 2 - ratio * (a - m) / s1 ** 2 * (adv_r.numpy() - nu * adv_c.numpy()) / lam) / 3
    np.testing.assert_allclose(g.numpy(), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gaussian_kl(col(mu), ls1, col(mu0), ls0).detach().ravel(), torch.tensor(kl))
    # the same through the module's per-sample function
    loss = focops_loss(torch.tensor(kl), torch.tensor(ratio), adv_r, adv_c, torch.tensor(nu), lam, delta)
    np.testing.assert_allclose(-float(obj), float(loss.mean()), rtol=1e-10)


def test_focops_nu_moves_by_lr_times_violation_and_is_clamped():
    solver = FOCOPS(FOCOPSConfig(lagrange_lr=0.5, lagrange_max=2.0), actor=torch.nn.Linear(1, 1))
    nu = torch.tensor([0.0, 1.0, 0.2, 1.5])
    new = solver.update_lagrange(nu, torch.tensor([3.0, 2.0, 0.0, 10.0]), torch.ones(4))
    torch.testing.assert_close(new, torch.tensor([1.0, 1.5, 0.0, 2.0]))  # +0.5*2, +0.5*1, max(0, .), min(nu_max, .)


# -- the per-task KL early stop ------------------------------------------------------------------------------------

def test_focops_kl_early_stop_stops_only_the_tasks_past_it(parts):
    t, batch = parts
    params = stacked_theta(t.meta, 3)
    state = {"cost_limit": torch.ones(3), "lagrange": torch.zeros(3)}

    def run(epochs, target_kl):
        cfg = FOCOPSConfig(lr=3e-3, epochs=epochs, target_kl=target_kl, delta=10.0, lagrange_lr=0.0)
        return FOCOPS(cfg, t.actor).step(params, batch, state)

    one, _, info1 = run(1, 0.0)
    lo, hi = sorted(info1["kl"].tolist())[:2]
    assert hi > lo * 1.01, info1["kl"]
    stopped = info1["kl"] > (lo + hi) / 2
    assert 0 < int(stopped.sum()) < 3
    new, _, info = run(4, (lo + hi) / 2)
    assert info["epochs"][stopped].tolist() == [1.0] * int(stopped.sum())
    assert info["early_stopped"][stopped].tolist() == [1.0] * int(stopped.sum())
    assert bool((info["epochs"][~stopped] > 1).all())
    free = run(int(info["epochs"][~stopped].max()), 0.0)[0]
    for k in new:
        torch.testing.assert_close(new[k][stopped], one[k][stopped])
        torch.testing.assert_close(new[k][~stopped], free[k][~stopped])
        assert not torch.allclose(new[k][~stopped], one[k][~stopped])


# -- whole inner steps on a tiny-nav batch ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(SOLVERS))
def test_inner_step_improves_its_objective(parts, name):
    t, batch = parts
    cls, cfg_cls = SOLVERS[name]
    solver = cls(cfg_cls(), t.actor)
    params = stacked_theta(t.meta, 3)
    # task 0 far above d = 1, the others within it (at J_C = d exactly P3O's penalty switches on and off with the
    # minibatches, and the whole batch's objective need not rise)
    batch = replace(batch, ep_cost=torch.tensor([6.0, 0.0, 0.0]))
    state = solver.init_state(3, 1.0, **({"lagrange": torch.tensor(1.0)} if name == "focops" else {}))
    new, new_state, info = solver.step(params, batch, state)
    terms = solver.whole_batch_terms(params, batch, new_state)
    with torch.no_grad():
        obj = lambda p: solver.evaluate(torch.cat([v.reshape(3, -1) for v in p.values()], 1), params, terms,  # noqa
                                        new_state)
        gain = obj(new) - obj(params)
        kl = solver.mean_kl(params, new, batch)
        cost_change = ((torch.exp(solver.log_prob(new, batch) - batch.logp) - 1) * batch.adv_c).mean(dim=(1, 2))
    assert bool((gain > 0).all()), gain
    torch.testing.assert_close(gain, info["objective_gain"], atol=1e-5, rtol=1e-4)
    assert bool((kl > 0).all()) and float(kl.max()) < 0.1, kl
    if name == "p3o":
        assert float(cost_change[0]) < 0, cost_change  # the violating task's cost estimate goes down
        assert info["penalty_active"].tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("name", list(SOLVERS))
def test_inner_step_is_independent_per_task(parts, name):
    """Task 0's new parameters (and nu) depend on its own batch only: replacing task 1's data with task 2's and its
    cost leaves them unchanged."""
    t, batch = parts
    cls, cfg_cls = SOLVERS[name]
    solver = cls(cfg_cls(), t.actor)
    params = stacked_theta(t.meta, 3)
    sa, sb = assert_task0_ignores_task1(solver, params, batch, solver.init_state(3, 1.0))
    if name == "focops":
        assert float(sa["lagrange"][0]) == float(sb["lagrange"][0])
        assert float(sa["lagrange"][1]) != float(sb["lagrange"][1])


@pytest.mark.parametrize("name", list(SOLVERS))
def test_no_differentiable_step_and_meta_cpo_refuses(parts, name):
    from safemeta import registry

    t, batch = parts
    cls, cfg_cls = SOLVERS[name]
    assert cls.supports_differentiable is False
    assert registry.inner.get(name) is cls
    solver = cls(cfg_cls(), t.actor)
    with pytest.raises(NotImplementedError):
        solver.step(stacked_theta(t.meta, 3), batch, solver.init_state(3, 1.0), differentiable=True)
    with pytest.raises(UserError, match="has no differentiable step"):
        registry.outer.get("dco_cpo").check_inner(name, cls, "dco_cpo")


def test_focops_nu_is_the_lagrange_key_c_maml_seeds():
    assert "lagrange" in FOCOPS(FOCOPSConfig(), actor=torch.nn.Linear(1, 1)).default_state(1)
    assert "lagrange" not in P3O(P3OConfig(), actor=torch.nn.Linear(1, 1)).default_state(1)


# -- learning on point-circle ----------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("inner, steps", [("p3o", 25), ("focops", 25)])
def test_solver_ends_within_the_cost_limit_on_point_circle(inner, steps):
    """As tests/test_inner_ppo.py's: 4 training tasks from a fresh init, ``steps`` inner steps (8 episodes each),
    CPO's cost shaping (H = 10), the ``feasible`` output; true J_C <= d = 25 on average over the tasks and a return
    far above the random initial policy's."""
    assert_solver_ends_within_d_on_point_circle(inner, steps)
