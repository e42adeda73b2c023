"""C-MAML (`fomaml_safe`): the meta-gradient is the task mean of each task's own post-adaptation Lagrangian
gradient (its own lambda) minus eta times the meta-policy's cost gradient, checked against a per-task
computation written out here; eta rises where the meta-policy is unsafe in the units of d (also where V_C's
discounted value is below d), stays 0 on a safe one and is clamped at 0; the meta lambda follows the adapted
policies' costs within [0, lagrange_max]; task cost critics start from the carried V_C, or from a fixed random
init without the safety critic (the paper's ablation); the global cost critic converges to the true discounted
cost; every inner solver runs and a resumed run continues exactly, multipliers included."""
import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from safemeta.evaluation.meta_test import MetaTestSpec
from safemeta.evaluation.meta_test import initial_critics as meta_test_critics
from safemeta.training.model import fit_meta_critics, stacked_theta
from safemeta.rollout.params import stack
from safemeta.training.trainer import MetaTrainer

UNSAFE = {"tiny-nav": {"hazard_radius": 100.0, "cost_limit": 5.0}}  # cost 1 every step: J_C = 20 per episode > d = 5
SAFE = {"tiny-nav": {"hazard_radius": 0.0}}  # no cost anywhere: J_C = 0 < d = 1


def _trainer(make_config, tasks=3, env_cfg=None, critic=None, **outer):
    return MetaTrainer(make_config(algo="c_maml", policy={"hidden_sizes": [16]}, env_cfg=env_cfg or {},
                                   critic={"epochs": 5, **(critic or {})},
                                   trainer={"tasks_per_iter": tasks, "adapt_steps": 2},
                                   outer_cfg={"fomaml_safe": outer}))


def _adapt(t, n):
    venv = t.family.make(t.family.sample(n, "train", np.random.default_rng(0)), 4, "cpu", 0)
    state = t.inner.init_state(n, t.family.cost_limit_for("train"), **t.outer.inner_overrides([]))
    return t.adapter.adapt(stacked_theta(t.meta, n), venv, 2, state, t.outer.initial_critics(n), 1,
                           torch.Generator().manual_seed(0))


def _flat_grad(loss, params):
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(params.values()))])


def _surrogate(t, params, obs, act, logp_old, adv):
    """E[pi(a|s) / pi_old(a|s) * adv] for one policy on ``[T, E, ...]`` samples (a Gaussian written out here)."""
    mean, log_std = torch.func.functional_call(t.actor, params, (obs,))
    logp = torch.distributions.Normal(mean, log_std.exp()).log_prob(act).sum(-1)
    return (torch.exp(logp - logp_old) * adv).mean()


def _expected_meta_gradient(t, result, meta_batch, lagrange, eta):
    """1/M sum_p grad of task p's Lagrangian surrogate at phi_p with lambda_p, task by task, minus eta times the
    meta-policy's gradient of E[ratio * centered A_C] on the pooled batch 0."""
    b = result.batches[-1]
    grads = []
    for p, lam in enumerate(lagrange):
        phi = {k: v[p].detach().clone().requires_grad_(True) for k, v in result.params[-1].items()}
        a_r, a_c = b.adv_r[p], b.adv_c[p]
        adv = ((a_r - a_r.mean()) / (a_r.std() + 1e-8) - lam * (a_c - a_c.mean())) / (1 + lam)
        grads.append(_flat_grad(_surrogate(t, phi, b.obs[p], b.act[p], b.logp[p], adv), phi))
    expected = torch.stack(grads).mean(0)
    if eta:
        theta = {k: v.detach().clone().requires_grad_(True) for k, v in t.meta.theta.items()}
        a_c = meta_batch.adv_c[0]
        safety = _flat_grad(_surrogate(t, theta, meta_batch.obs[0], meta_batch.act[0], meta_batch.logp[0],
                                       a_c - a_c.mean()), theta)
        expected = expected - eta * safety
    return expected.unsqueeze(0)


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_meta_gradient_is_the_task_mean_of_each_tasks_lagrangian_gradient_minus_eta_times_the_safety_gradient(
        make_config, eta):
    """Three tasks with different lambdas: a sum instead of a mean, one lambda for every task, or a wrong sign or
    weight of the safety term all fail."""
    t = _trainer(make_config, adaptive_eta=True)
    result = _adapt(t, 3)
    meta_batch = fit_meta_critics(t.meta, t.critics, result.batches[0])
    lagrange = [0.0, 0.5, 4.0]
    result.state = {**result.state, "lagrange": torch.tensor(lagrange)}
    t.outer.eta = eta
    grad = t.outer.meta_gradient(result, meta_batch)
    expected = _expected_meta_gradient(t, result, meta_batch, lagrange, eta)
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)
    other = _expected_meta_gradient(t, result, meta_batch, lagrange[::-1], eta)  # the lambdas matter per task
    assert float((other - expected).norm()) > 0.05 * float(expected.norm())
    if eta:  # and so does the safety term
        assert float((_expected_meta_gradient(t, result, meta_batch, lagrange, 0.0) - expected).norm()) > \
            0.05 * float(expected.norm())


@pytest.mark.parametrize("signal,activates", [("episode_cost", True), ("critic_episode", True),
                                              ("critic_discounted", False)])
def test_eta_rises_on_an_unsafe_meta_policy_whose_discounted_value_is_below_d(make_config, signal, activates):
    """Issue 18: the meta-policy pays 20 per episode against d = 5, while its discounted cost V_C(s0) is 2
    (cost_gamma 0.5), below d. Compared in the units of d (the default, or V_C in episode units), eta rises every
    iteration; the paper's literal V_C(s0) - d (``critic_discounted``, the code before issue 18) leaves eta at 0
    and C-MAML runs as its own ablation."""
    t = _trainer(make_config, env_cfg=UNSAFE, critic={"epochs": 50, "lr": 0.01, "cost_gamma": 0.5},
                 eta_signal=signal, eta_lr=0.01)
    etas = []
    for _ in range(3):
        m = t.train_iteration()
        assert m["meta/cost_0"] == pytest.approx(20.0) and m["meta/V_C"] < 5.0  # unsafe, yet V_C(s0) < d
        etas.append(m["meta/eta"])
    assert m["meta/V_C"] == pytest.approx(2.0, rel=0.1)  # the critic is right: the units were wrong
    if not activates:
        assert etas == [0.0, 0.0, 0.0]
        return
    assert etas[0] > 0 and etas[0] < etas[1] < etas[2]
    assert m["meta/eta_signal"] == pytest.approx(20.0, rel=0.1)
    if signal == "episode_cost":
        assert etas == pytest.approx([0.01 * 15 * k for k in (1, 2, 3)])


@pytest.mark.parametrize("signal", ["episode_cost", "critic_episode", "critic_discounted"])
def test_eta_stays_zero_on_a_safe_meta_policy_and_is_clamped_at_zero(make_config, signal):
    t = _trainer(make_config, env_cfg=SAFE, eta_signal=signal, eta_init=0.0, eta_lr=0.1)
    assert [t.train_iteration()["meta/eta"] for _ in range(2)] == [0.0, 0.0]
    u = _trainer(make_config, env_cfg=SAFE, eta_signal=signal, eta_init=0.03, eta_lr=0.1)
    m = u.train_iteration()  # 0.03 + 0.1 * (S - 1) < 0 for any S < 0.7
    assert m["meta/eta_signal"] < 0.7 and m["meta/eta"] == 0.0


def _spy_post_cost(t, paid):
    original = t.outer.update

    def spy(result, tasks):
        result.batches[-1] = replace(result.batches[-1], ep_cost=torch.full((3,), paid.pop(0)))
        return original(result, tasks)

    t.outer.update = spy


def test_meta_lambda_follows_post_adaptation_costs(make_config):
    t = _trainer(make_config, lagrange_init=0.2, lagrange_lr=0.05)
    _spy_post_cost(t, [30.0, 0.0])
    assert t.train_iteration()["meta/lagrange"] == pytest.approx(0.2 + 0.05 * (30.0 - 1.0))
    t.outer.lagrange = 0.01
    assert t.train_iteration()["meta/lagrange"] == 0.0  # 0.01 + 0.05 * (0 - 1) < 0: clamped


@pytest.mark.parametrize("cap,start,expected", [({}, 99.9, 100.0), ({"lagrange_max": 2.0}, 1.9, 2.0)])
def test_meta_lambda_is_clamped_at_lagrange_max(make_config, cap, start, expected):
    """trpolag caps a task's lambda at lagrange_max = 100; the meta lambda that starts it has the same cap."""
    t = _trainer(make_config, lagrange_init=start, lagrange_lr=0.05, **cap)
    _spy_post_cost(t, [30.0, 30.0])
    assert [t.train_iteration()["meta/lagrange"] for _ in range(2)] == [expected, expected]
    assert t.outer.inherited_state([])["lagrange"].item() == pytest.approx(expected)


def test_meta_lambda_starts_every_tasks_multiplier(make_config):
    t = _trainer(make_config, lagrange_init=0.7)
    state = t.inner.init_state(3, 1.0, **t.outer.inner_overrides([]))
    assert state["lagrange"].tolist() == pytest.approx([0.7] * 3)


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_task_cost_critics_start_from_the_carried_V_C_or_without_the_safety_critic_from_a_fixed_random_init(
        make_config):
    full = _trainer(make_config, env_cfg=UNSAFE)
    ablation = _trainer(make_config, env_cfg=UNSAFE, safety_critic=False, eta_init=0.5)
    assert _same(full.meta.theta, ablation.meta.theta)  # the ablation's init is drawn off the run's random stream
    fresh = {k: v[0].clone() for k, v in ablation.outer.initial_critics(1).cost.items()}
    v_c_before = dict(full.meta.critic_cost)
    assert not _same(fresh, v_c_before)
    for _ in range(2):
        m_full, m_abl = full.train_iteration(), ablation.train_iteration()
    assert not _same(full.meta.critic_cost, v_c_before)  # V_C was fitted, so "starts from V_C" says something
    for t in (full, ablation):
        start = t.outer.initial_critics(3)
        assert _same(start.reward, stack(t.meta.critic_reward, 3))
    assert _same(full.outer.initial_critics(3).cost, stack(full.meta.critic_cost, 3))
    assert _same(ablation.outer.initial_critics(3).cost, stack(fresh, 3))  # not the fitted V_C
    inherit = MetaTestSpec.from_config(ablation.cfg.eval, critics="inherit")  # a meta-test that inherits the critics
    assert _same(meta_test_critics(ablation, inherit, 2).cost, stack(fresh, 2))
    assert m_full["meta/eta"] > 0 and m_abl["meta/eta"] == 0.0 and ablation.outer.eta == 0.0  # eta_init ignored
    result = _adapt(ablation, 3)  # and no safety term whatever eta holds
    meta_batch = fit_meta_critics(ablation.meta, ablation.critics, result.batches[0])
    without = ablation.outer.meta_gradient(result, meta_batch)
    ablation.outer.eta = 5.0
    torch.testing.assert_close(ablation.outer.meta_gradient(result, meta_batch), without)


def test_global_cost_critic_converges_to_the_discounted_cost(make_config):
    """A hazard covering the whole arena: cost 1 at every step, so V_C = 1 / (1 - gamma_c) everywhere
    (time-limit truncations bootstrap, so the infinite-horizon value is the fixed point)."""
    t = MetaTrainer(make_config(algo="c_maml", env_cfg={"tiny-nav": {"hazard_radius": 100.0}},
                                critic={"epochs": 50, "lr": 0.01, "cost_gamma": 0.8, "cost_lam": 1.0}))
    gen = torch.Generator().manual_seed(0)
    venv = t.family.make(t.family.sample(3, "train", np.random.default_rng(0)), 8, "cpu", 0)
    for _ in range(30):
        batch = t.adapter.collector.collect(stacked_theta(t.meta, 3), venv, 1, gen)
        assert float(batch.cost.mean()) == 1.0
        fit_meta_critics(t.meta, t.critics, batch)
    with torch.no_grad():
        v = t.critics.values(stack(t.meta.critic_cost, 1), batch.pooled().obs)
    assert float(v.mean()) == pytest.approx(5.0, rel=0.05)
    assert float((v - 5.0).abs().max()) < 0.5


@pytest.mark.parametrize("inner", ["trpolag", "cpo", "crpo"])
def test_every_inner_solver_runs_and_a_resumed_run_continues_exactly(make_config, inner):
    """Nonzero meta lambda and eta at the checkpoint: the resumed run's next iteration is the original's."""
    cfg = make_config(algo="c_maml", inner=inner, policy={"hidden_sizes": [16]}, env_cfg=UNSAFE)
    t = MetaTrainer(cfg)
    before = {k: v.detach().clone() for k, v in t.meta.theta.items()}
    m = t.train_iteration()
    assert np.isfinite(m["meta_grad_norm"]) and m["meta_grad_norm"] > 0 and not _same(before, t.meta.theta)
    assert m["meta/lagrange"] > 0 and m["meta/eta"] > 0  # J_C = 20 > d = 5 before and after adaptation
    t.outer.lagrange, t.outer.eta = 0.37, 0.21
    checkpoint = copy.deepcopy(t.state_dict())  # what a checkpoint file holds (no tensors shared with t)
    m_t = t.train_iteration()
    u = MetaTrainer(cfg)
    u.load_state_dict(checkpoint)
    assert (u.outer.lagrange, u.outer.eta) == (0.37, 0.21)
    assert u.outer.inherited_state([])["lagrange"].item() == pytest.approx(0.37)
    m_u = u.train_iteration()
    assert _same(t.meta.theta, u.meta.theta)
    assert {k: m_u[k] for k in m_t if k.startswith("meta")} == {k: m_t[k] for k in m_t if k.startswith("meta")}
    assert m_u["meta/eta"] == pytest.approx(0.21 + 0.01 * (m_u["meta/cost_0"] - 5.0))


def test_trust_region_meta_step_has_the_kl_radius(make_config):
    t = _trainer(make_config, step="trust_region", max_kl=0.005)
    before = {k: v.detach().clone().unsqueeze(0) for k, v in t.meta.theta.items()}
    captured = []
    original = t.outer.update
    t.outer.update = lambda result, tasks: (captured.append(result.batches[0].pooled()), original(result, tasks))[1]
    t.train_iteration()
    after = {k: v.detach().unsqueeze(0) for k, v in t.meta.theta.items()}
    kl = float(t.inner.mean_kl(before, after, captured[0])[0])
    assert 0.5 * 0.005 < kl < 1.5 * 0.005  # the quadratic model's radius, measured with the exact KL


@pytest.mark.parametrize("env,limit,pillars", [("point-goal-level1", 0.75, 1), ("point-goal", 5.0, 10)])
def test_point_goal_levels_are_the_papers_environments(env, limit, pillars):
    """C-MAML's Environment 1 (level 1, d = 0.75) and Environment 2 (level 2, d = 5) under c_maml."""
    import safemeta
    from safemeta import registry

    cfg = safemeta.resolve_config([("t", {"algo": "c_maml", "env": env})])
    family = registry.env.get(env)(cfg.env_params)
    task = family.sample(1, "train", np.random.default_rng(0))[0]
    assert family.cost_limit_for("train") == limit and family.cost_limit_for("test") == limit
    assert len(family.layout(task)["pillars"]) == pillars and len(family.layout(task)["hazards"]) == 10
