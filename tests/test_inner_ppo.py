"""The PPO family (ppo, ppolag, pidlag, pidlag_trpo): PPO's clip, the PID multiplier's response to a step change of
cost, PPO-Lagrangian's dual ascent, the per-task KL early stop, whole inner steps on tiny-nav batches (gain, per-task
independence) and, marked slow, each constrained solver ending within d on point-circle."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.conftest import assert_solver_ends_within_d_on_point_circle, assert_task0_ignores_task1
from safemeta.algorithms.inner.focops import FOCOPS, FOCOPSConfig
from safemeta.algorithms.inner.pidlag import PIDLag, PIDLagConfig, PIDLagTRPO, PIDLagTRPOConfig, pid_update
from safemeta.algorithms.inner.ppo import PPO, PPOConfig, clipped_surrogate
from safemeta.algorithms.inner.ppolag import PPOLag, PPOLagConfig
from safemeta.algorithms.inner.trpolag import TRPOLag, TRPOLagConfig
from safemeta.errors import UserError
from safemeta.training.model import stacked_theta

SOLVERS = {"ppo": (PPO, PPOConfig), "ppolag": (PPOLag, PPOLagConfig), "pidlag": (PIDLag, PIDLagConfig),
           "pidlag_trpo": (PIDLagTRPO, PIDLagTRPOConfig)}


@pytest.fixture
def parts(rollout):
    return rollout(8)


# -- PPO's clip (eq. 7) ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("adv, ratio, grad", [
    (1.0, 1.5, 0.0),     # A > 0, r > 1 + eps: the clip binds, no gradient
    (-1.0, 0.5, 0.0),    # A < 0, r < 1 - eps: the clip binds, no gradient
    (2.0, 1.1, 2.2),     # inside the range: d(rA)/dlogp = A r
    (-2.0, 0.9, -1.8),
    (1.0, 0.5, 0.5),     # outside on the other side: min picks the unclipped r A, gradient A r
    (-1.0, 1.5, -1.5),
    (1.0, 1.2 + 1e-6, 0.0),  # just past the edge
])
def test_clipped_surrogate_gradient_wrt_log_prob(adv, ratio, grad):
    logp_old = torch.tensor(-0.7, dtype=torch.float64)
    logp = (logp_old + np.log(ratio)).clone().requires_grad_(True)
    value = clipped_surrogate(logp, logp_old, torch.tensor(adv, dtype=torch.float64), clip=0.2)
    (g,) = torch.autograd.grad(value, logp)
    assert float(g) == pytest.approx(grad, abs=1e-9)
    assert float(value.detach()) == pytest.approx(min(ratio * adv, min(max(ratio, 0.8), 1.2) * adv))


# -- the PID multiplier (Stooke et al. 2020, Algorithm 2) --------------------------------------------------------

def pid_trace(costs, d=10.0, **gains):
    """lambda after each update for a sequence of episode costs (one task)."""
    solver = PIDLag(PIDLagConfig(**{"kp": 0.0, "ki": 0.0, "kd": 0.0, **gains}), actor=torch.nn.Linear(1, 1))
    state = solver.init_state(1, d)
    out = []
    for c in costs:
        state = pid_update(state, torch.tensor([float(c)]), solver.cfg)
        out.append(float(state["lagrange"]))
    return out


def test_pid_proportional_jumps_by_kp_delta_and_stays():
    lam = pid_trace([10, 10, 10, 15, 15, 15, 15, 7], kp=0.1)
    assert lam[:3] == pytest.approx([0, 0, 0])
    assert lam[3:7] == pytest.approx([0.5] * 4)  # Kp * (15 - 10), held while the cost stays
    assert lam[7] == 0.0  # below d: clamped at 0, not Kp * (7 - 10)
    smoothed = pid_trace([10, 15, 15], kp=0.1, delta_p_ema=0.5)  # the paper's delta_p: the error's EMA
    assert smoothed == pytest.approx([0.0, 0.25, 0.375])


def test_pid_integral_ramps_linearly_and_never_winds_up_below_zero():
    costs = [15] * 5 + [5] * 8 + [15]
    lam = pid_trace(costs, ki=0.01)
    assert lam[:5] == pytest.approx([0.05, 0.10, 0.15, 0.20, 0.25])  # K_I * sum of (J_C - d) = 0.05 per update
    assert lam[5:9] == pytest.approx([0.20, 0.15, 0.10, 0.05])
    assert lam[9:13] == pytest.approx([0.0] * 4) and min(lam) >= 0.0
    assert lam[13] == pytest.approx(0.05)  # integral clamped at 0: responds at once when the cost rises again
    # K_I alone is the plain Lagrangian dual ascent with rate K_I (trpolag's update)
    trpolag = TRPOLag(TRPOLagConfig(lagrange_lr=0.01), actor=torch.nn.Linear(1, 1))
    dual, ascent = torch.zeros(1), []
    for c in costs:
        dual = trpolag.update_lagrange(dual, torch.tensor([float(c)]), torch.tensor([10.0]))
        ascent.append(float(dual))
    assert lam == pytest.approx(ascent)


def test_pid_derivative_spikes_once_on_a_rise_and_ignores_a_drop():
    lam = pid_trace([10, 10, 10, 20, 20, 20, 5, 5], kd=0.01)
    assert lam == pytest.approx([0, 0, 0, 0.1, 0, 0, 0, 0])
    assert pid_trace([30], kd=0.01) == [0.0]  # the first update has no previous cost, hence no rise
    # a fall of the cost takes nothing off the other terms: K_P (20 - 10) then K_P (15 - 10), not 0.5 - K_D * 5
    assert pid_trace([20, 20, 15], kp=0.1, kd=0.01) == pytest.approx([1.0, 1.0, 0.5])


def test_pid_all_terms_add_and_state_is_per_task():
    solver = PIDLag(PIDLagConfig(kp=0.1, ki=0.01, kd=0.01), actor=torch.nn.Linear(1, 1))
    state = solver.init_state(2, torch.tensor([10.0, 20.0]))
    state = pid_update(state, torch.tensor([10.0, 20.0]), solver.cfg)
    state = pid_update(state, torch.tensor([20.0, 20.0]), solver.cfg)
    # task 0: e = 10, I = 10, rise 10 -> 0.1*10 + 0.01*10 + 0.01*10; task 1 at its limit: 0
    torch.testing.assert_close(state["lagrange"], torch.tensor([1.2, 0.0]))
    torch.testing.assert_close(state["pid_updates"], torch.tensor([2.0, 2.0]))


def test_pid_inherited_lambda_starts_the_integral():
    solver = PIDLag(PIDLagConfig(kp=0.0, ki=0.01, kd=0.0), actor=torch.nn.Linear(1, 1))
    state = solver.init_state(2, 10.0, lagrange=torch.tensor(0.3))
    torch.testing.assert_close(state["pid_integral"], torch.tensor([30.0, 30.0]))
    state = pid_update(state, torch.tensor([15.0, 5.0]), solver.cfg)
    torch.testing.assert_close(state["lagrange"], torch.tensor([0.35, 0.25]))  # lambda + K_I e, as dual ascent


# -- PPO-Lagrangian's multiplier ---------------------------------------------------------------------------------

def test_ppolag_lambda_moves_by_lr_times_violation_and_is_clamped():
    solver = PPOLag(PPOLagConfig(lagrange_lr=0.5, lagrange_max=100.0), actor=torch.nn.Linear(1, 1))
    lam = torch.tensor([0.0, 1.0, 0.2, 99.5])
    new = solver.update_lagrange(lam, torch.tensor([3.0, 3.0, 0.0, 10.0]), torch.ones(4))
    torch.testing.assert_close(new, torch.tensor([1.0, 2.0, 0.0, 100.0]))  # +0.5*2, +0.5*2, max(0, .), min(100, .)


@pytest.mark.parametrize("cls, cfg_cls", [(PPOLag, PPOLagConfig), (FOCOPS, FOCOPSConfig)])
def test_step_updates_the_multiplier_before_the_policy_step(parts, cls, cfg_cls):
    """PPOLag's lambda and FOCOPS' nu: one dual step on the batch's J_C - d, then the policy step."""
    t, batch = parts
    solver = cls(cfg_cls(lagrange_lr=0.1), t.actor)
    batch = replace(batch, ep_cost=torch.tensor([3.0, 1.0, 0.0]))
    state = solver.init_state(3, 1.0, lagrange=torch.tensor(0.05))  # as C-MAML's meta multiplier seeds it
    _, new_state, info = solver.step(stacked_theta(t.meta, 3), batch, state)
    torch.testing.assert_close(new_state["lagrange"], torch.tensor([0.25, 0.05, 0.0]))
    torch.testing.assert_close(info["lagrange"], new_state["lagrange"])


# -- the per-task KL early stop ----------------------------------------------------------------------------------

def test_kl_early_stop_stops_only_the_tasks_that_exceed_it(parts):
    t, batch = parts
    params = stacked_theta(t.meta, 3)
    state = {"cost_limit": torch.ones(3)}

    def run(epochs, target_kl):
        return PPO(PPOConfig(lr=3e-3, epochs=epochs, target_kl=target_kl), t.actor).step(params, batch, state)

    one, _, info1 = run(1, 0.0)
    kl1 = info1["kl"]
    lo, hi = sorted(kl1.tolist())[:2]
    assert hi > lo * 1.01, kl1  # the tasks' first passes differ enough to put a threshold between them
    target = (lo + hi) / 2
    stopped = kl1 > target
    assert 0 < int(stopped.sum()) < 3
    new, _, info = run(4, target)
    assert info["epochs"][stopped].tolist() == [1.0] * int(stopped.sum())
    assert info["early_stopped"][stopped].tolist() == [1.0] * int(stopped.sum())
    assert bool((info["epochs"][~stopped] > 1).all())
    free = run(int(info["epochs"][~stopped].max()), 0.0)[0]
    for k in new:
        torch.testing.assert_close(new[k][stopped], one[k][stopped])  # kept the pass that crossed target_kl
        torch.testing.assert_close(new[k][~stopped], free[k][~stopped])  # the others ran on unaffected
        assert not torch.allclose(new[k][~stopped], one[k][~stopped])


# -- whole inner steps on a tiny-nav batch -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ppo", "ppolag", "pidlag"])
def test_inner_step_increases_the_clipped_surrogate(parts, name):
    t, batch = parts
    cls, cfg_cls = SOLVERS[name]
    solver = cls(cfg_cls(), t.actor)
    params = stacked_theta(t.meta, 3)
    state = solver.init_state(3, 1.0)
    new, new_state, info = solver.step(params, batch, state)
    adv = solver.advantages(batch, new_state)
    with torch.no_grad():
        def clipped(p):
            return clipped_surrogate(solver.log_prob(p, batch), batch.logp, adv, solver.cfg.clip).mean(dim=(1, 2))
        gain = clipped(new) - clipped(params)
        kl = solver.mean_kl(params, new, batch)
    assert bool((gain > 0).all()), gain
    torch.testing.assert_close(gain, info["surrogate_gain"], atol=1e-5, rtol=1e-4)
    assert bool((kl > 0).all()) and float(kl.max()) < 0.1, kl


def test_inner_step_is_independent_per_task(parts):
    """Task 0's new parameters and multiplier depend on its own batch only: replacing task 1's data (its
    samples, advantages and cost) with task 2's leaves them unchanged."""
    t, batch = parts
    solver = PPOLag(PPOLagConfig(lagrange_lr=0.1), t.actor)
    params = stacked_theta(t.meta, 3)
    sa, sb = assert_task0_ignores_task1(solver, params, batch, solver.init_state(3, 1.0))
    assert float(sa["lagrange"][0]) == float(sb["lagrange"][0])
    assert float(sa["lagrange"][1]) != float(sb["lagrange"][1])


def test_pidlag_trpo_takes_a_trust_region_step_on_the_pid_multiplier(parts):
    t, batch = parts
    solver = PIDLagTRPO(PIDLagTRPOConfig(kp=0.1, ki=0.0, kd=0.0, max_kl=0.01), t.actor)
    batch = replace(batch, ep_cost=torch.tensor([6.0, 1.0, 0.0]))
    params = stacked_theta(t.meta, 3)
    new, state, info = solver.step(params, batch, solver.init_state(3, 1.0))
    torch.testing.assert_close(state["lagrange"], torch.tensor([0.5, 0.0, 0.0]))
    assert bool((info["kl"] <= 0.01 + 1e-6).all()) and bool((info["kl"] > 0).all())


@pytest.mark.parametrize("name", list(SOLVERS))
def test_no_differentiable_step_and_meta_cpo_refuses(parts, name):
    from safemeta import registry

    t, batch = parts
    cls, cfg_cls = SOLVERS[name]
    assert cls.supports_differentiable is False
    solver = cls(cfg_cls(), t.actor)
    with pytest.raises(NotImplementedError):
        solver.step(stacked_theta(t.meta, 3), batch, solver.init_state(3, 1.0), differentiable=True)
    with pytest.raises(UserError, match="has no differentiable step"):
        registry.outer.get("dco_cpo").check_inner(name, cls, "dco_cpo")


# -- learning on point-circle ------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("inner, steps", [("ppolag", 25), ("pidlag", 25), ("pidlag_trpo", 40)])
def test_solver_ends_within_the_cost_limit_on_point_circle(inner, steps):
    """As tests/test_inner_cpo_crpo.py's test of cpo / crpo / trpolag: each task's own policy from a fresh init,
    ``steps`` inner steps on 4 training tasks (8 episodes per step), CPO's cost shaping (H = 10) and the
    ``feasible`` output rule; the handed-out policy, scored on 16 fresh episodes per task, has true J_C <= d = 25
    on average over the tasks (no tolerance) and a return far above the random initial policy's (about 0).
    The PPO solvers take 25 steps (each is up to 10 passes of minibatch Adam; they end far inside d by then)."""
    assert_solver_ends_within_d_on_point_circle(inner, steps)
