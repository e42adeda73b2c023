"""Compiled collection (``trainer.compile_collection``, `safemeta.rollout.compiled`).

- point-goal's and the circle families' `pure_step` is their `step`, bit for bit, through pillar pushes,
  terminations, truncations and resets, given the reset draws the env would make (fast: no compilation).
- The compiled collector gives the eager collector's observations, actions, rewards and costs at the same seed
  within ``ATOL`` over a whole episode (one without a mid-rollout reset: the two draw reset positions
  differently), and its own graph run uncompiled within ``ATOL`` through terminations and resets. These compile (about a minute on one core
  without torch's on-disk cache), so they run with the slow tests.
"""
import numpy as np
import pytest
import torch

import safemeta.rollout.collector as collector_module
from safemeta.registry import env as env_registry
from safemeta.rollout.collector import Collector
from safemeta.rollout.compiled import rollout_steps
from safemeta.rollout.obs_norm import RunningObsNorm
from safemeta.rollout.params import stack
from safemeta.rollout.policy import GaussianActor, init_params

ATOL = 1e-5  # fused kernels round differently (vectorized sin / cos / atan2 / exp); seen: 1.2e-7 obs, 4.8e-7 reward
CFG = {"horizon": 40, "goal_radius": 1.6}  # a wide goal: terminations within a short episode


def _family(**cfg):
    cls = env_registry.get("point-goal")
    return cls(cls.Config(**cfg))


@pytest.mark.parametrize("name, cfg", [
    ("point-goal", {"horizon": 40, "goal_radius": 1.6, "pillar_radius": 0.5}),  # big pillars: contacts, goals reached
    ("point-circle", {"horizon": 40}),
    ("car-circle-hazard", {"horizon": 40}),
])
def test_pure_step_is_step_bit_for_bit_through_pushes_and_resets(name, cfg):
    cls = env_registry.get(name)
    fam = cls(cls.Config(**cfg))
    venv = fam.make(fam.sample(4, "train", np.random.default_rng(3)), 3, "cpu", 0)
    venv.reset(5)
    state = venv.pure_state()
    g = torch.Generator().manual_seed(0)
    seen = {"reached": 0, "truncated": 0, "contact": 0, "cost": 0}
    for _ in range(100):
        act = 2.0 * torch.randn(venv.num_envs, 2, generator=g)
        if name != "point-goal":
            act[:, 0] += 1.5  # mostly forward: far enough to cross the walls
        ahead = torch.Generator().set_state(venv.gen.get_state())  # what a reset at this step draws
        u = torch.rand(venv.num_envs, venv.reset_draws, generator=ahead)
        state, obs, final, rew, cost, term, trunc = venv.pure_step(state, act, u)
        e_obs, e_rew, e_cost, e_term, e_trunc, info = venv.step(act)
        for a, b in ((obs, e_obs), (final, info["final_obs"]), (rew, e_rew), (cost, e_cost), (term, e_term),
                     (trunc, e_trunc), (state["pos"], venv.robot.pos), (state["heading"], venv.robot.heading),
                     (state["motion"], venv.robot.motion), (state["t"], venv.t)):
            assert torch.equal(a, b)
        seen["reached"] += int(term.sum())
        seen["truncated"] += int(trunc.sum())
        seen["contact"] += int(getattr(venv, "_pushed", False))  # the eager step pushed a robot out of a pillar
        seen["cost"] += int(cost.sum())
    assert seen["truncated"] > 0 and seen["cost"] > 0, seen
    if name == "point-goal":
        assert seen["reached"] > 0 and seen["contact"] > 0, seen


def test_compiled_flag_on_a_family_without_a_pure_step_collects_eagerly():
    cls = env_registry.get("point-button")
    fam = cls(cls.Config(horizon=30))
    tasks = fam.sample(2, "train", np.random.default_rng(0))
    actor = GaussianActor(fam.make(tasks, 1).obs_dim, 2, (16, 16), "tanh", -0.5)
    params = stack(init_params(actor), 2)
    a, b = (Collector(actor, compiled=c).collect(params, fam.make(tasks, 2), 1, torch.Generator().manual_seed(0))
            for c in (False, True))
    assert torch.equal(a.obs, b.obs) and torch.equal(a.rew, b.rew)


def _collect(compiled, episodes, **cfg):
    fam = _family(**cfg)
    tasks = fam.sample(3, "train", np.random.default_rng(0))
    venv = fam.make(tasks, 2, "cpu", 0)
    torch.manual_seed(0)  # the actor's initialization
    actor = GaussianActor(venv.obs_dim, venv.act_dim, (32, 32), "tanh", 0.0)
    g = torch.Generator().manual_seed(1)
    params = {k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in stack(init_params(actor), 3).items()}
    norm = RunningObsNorm(venv.obs_dim)
    norm.mean = torch.linspace(-0.5, 0.5, venv.obs_dim, dtype=torch.float64)
    batch = Collector(actor, norm, compiled=compiled).collect(params, venv, episodes, torch.Generator().manual_seed(7))
    return batch, norm.pending()


def _close(a, b):
    for field in ("obs", "act", "rew", "next_obs"):
        x, y = getattr(a, field), getattr(b, field)
        assert torch.allclose(x, y, rtol=0, atol=ATOL), (field, float((x - y).abs().max()))
    for field in ("cost", "terminated", "truncated", "logp"):  # logp: from the same noise, by the same eager ops
        assert torch.equal(getattr(a, field), getattr(b, field)), field


@pytest.mark.slow
def test_compiled_collection_is_eager_collection_within_tolerance_over_an_episode():
    cfg = {"horizon": CFG["horizon"]}  # no goal reached: no reset within the rollout (they draw differently)
    (eager, eager_moments), (compiled, moments) = _collect(False, 1, **cfg), _collect(True, 1, **cfg)
    assert int(eager.terminated.sum()) == 0 and int(eager.truncated.sum()) == 6
    _close(compiled, eager)
    assert torch.allclose(moments[1], eager_moments[1], rtol=1e-6)  # the normalization saw the same observations


@pytest.mark.slow
def test_compiled_collection_is_its_own_graph_run_eagerly_through_resets(monkeypatch):
    compiled, _ = _collect(True, 3, **CFG)
    monkeypatch.setattr(collector_module, "compiled_rollout", lambda: rollout_steps)
    plain, _ = _collect(True, 3, **CFG)
    _close(compiled, plain)
    assert int(plain.terminated.sum()) > 0 and int(plain.truncated.sum()) > 0
