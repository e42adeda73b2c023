"""C-MAML (`fomaml_safe`): with one task and eta = 0 the meta-gradient is that task's post-adaptation
gradient; eta and the meta lambda move with their violations and are clamped at 0; the global cost
critic converges to the true discounted cost on a fixed-cost task; every inner solver runs."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from safemeta.algorithms.inner.natural_gradient import flat_grad
from safemeta.model import fit_meta_critics, stacked_theta
from safemeta.params import detach, stack
from safemeta.trainer import MetaTrainer


def _trainer(make_config, tasks=3, **outer):
    return MetaTrainer(make_config(algo="c_maml", policy={"hidden_sizes": [16]},
                                   trainer={"tasks_per_iter": tasks, "adapt_steps": 2},
                                   outer_cfg={"fomaml_safe": outer}))


def _adapt(t, n):
    venv = t.family.make(t.family.sample(n, "train", np.random.default_rng(0)), 4, "cpu", 0)
    state = t.inner.init_state(n, t.family.cost_limit_for("train"), **t.outer.inner_overrides([]))
    return t.adapter.adapt(stacked_theta(t.meta, n), venv, 2, state, t.outer.initial_critics(n), 1,
                           torch.Generator().manual_seed(0))


def test_one_task_without_eta_gives_the_post_adaptation_gradient(make_config):
    t = _trainer(make_config, tasks=1, adaptive_eta=False)
    result = _adapt(t, 1)
    grad = t.outer.meta_gradient(result, fit_meta_critics(t.meta, t.critics, result.batches[0]))
    phi = {k: v.requires_grad_(True) for k, v in detach(result.params[-1]).items()}
    expected = flat_grad(t.inner.objective(phi, result.batches[-1], result.state).sum(), phi)  # TRPOLag's own
    torch.testing.assert_close(grad, expected)


def test_eta_adds_the_safety_critics_cost_gradient(make_config):
    t = _trainer(make_config, adaptive_eta=True)
    result = _adapt(t, 3)
    meta_batch = fit_meta_critics(t.meta, t.critics, result.batches[0])
    t.outer.eta = 0.0
    without = t.outer.meta_gradient(result, meta_batch)
    t.outer.eta = 2.0
    torch.testing.assert_close(t.outer.meta_gradient(result, meta_batch),
                               without - 2.0 * t.outer.safety_gradient(meta_batch))
    assert float(t.outer.safety_gradient(meta_batch).norm()) > 0


def _set_cost_critic_bias(t, value):
    last = [k for k in t.meta.critic_cost if k.endswith("bias")][-1]
    t.meta.critic_cost[last] = torch.full_like(t.meta.critic_cost[last], value)


def test_eta_rises_above_the_limit_and_falls_clamped_below(make_config):
    t = _trainer(make_config, eta_init=0.5, eta_lr=0.01)
    _set_cost_critic_bias(t, 100.0)  # V_C >> d = 1
    m = t.train_iteration()
    assert m["meta/V_C"] > 50 and m["meta/eta"] == pytest.approx(0.5 + 0.01 * (m["meta/V_C"] - 1.0))
    _set_cost_critic_bias(t, -1000.0)  # V_C << d: eta would go negative
    assert t.train_iteration()["meta/eta"] == 0.0


def test_meta_lambda_follows_post_adaptation_costs(make_config):
    t = _trainer(make_config, lagrange_init=0.2, lagrange_lr=0.05)
    paid = [30.0, 0.0]
    original = t.outer.update

    def spy(result, tasks):
        result.batches[-1] = replace(result.batches[-1], ep_cost=torch.full((3,), paid.pop(0)))
        return original(result, tasks)

    t.outer.update = spy
    assert t.train_iteration()["meta/lagrange"] == pytest.approx(0.2 + 0.05 * (30.0 - 1.0))
    lam = t.outer.lagrange
    t.outer.lagrange = 0.01
    assert t.train_iteration()["meta/lagrange"] == 0.0  # 0.01 + 0.05 * (0 - 1) < 0: clamped
    assert lam > 0.2


def test_meta_lambda_starts_every_tasks_multiplier(make_config):
    t = _trainer(make_config, lagrange_init=0.7)
    state = t.inner.init_state(3, 1.0, **t.outer.inner_overrides([]))
    assert state["lagrange"].tolist() == pytest.approx([0.7] * 3)


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
def test_every_inner_solver_runs_and_the_run_resumes_the_multipliers(make_config, inner):
    t = MetaTrainer(make_config(algo="c_maml", inner=inner, policy={"hidden_sizes": [16]}))
    m = t.train_iteration()
    assert np.isfinite(m["meta_grad_norm"]) and m["meta/lagrange"] >= 0 and m["meta/eta"] >= 0
    state = t.state_dict()
    u = MetaTrainer(make_config(algo="c_maml", inner=inner, policy={"hidden_sizes": [16]}))
    u.load_state_dict(state)
    assert (u.outer.lagrange, u.outer.eta) == (t.outer.lagrange, t.outer.eta)


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
