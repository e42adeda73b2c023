"""VecCMDP bookkeeping, the tiny family's splits, and the vectorized collector."""
import numpy as np
import torch

from safemeta.rollout.collector import Collector
from safemeta.rollout.params import stack
from safemeta.rollout.policy import GaussianActor, init_params
from safemeta.registry import env as env_registry


def _family(**kw):
    cls = env_registry.get("tiny-nav")
    return cls(cls.Config(**kw))


def test_splits_are_disjoint_and_reproducible():
    fam = _family()
    train = fam.sample(200, "train", np.random.default_rng(0))
    test = fam.sample(200, "test", np.random.default_rng(0))
    assert max(t.params["angle"] for t in train) < 1.5 * np.pi <= min(t.params["angle"] for t in test)
    assert fam.sample(3, "train", np.random.default_rng(5)) == fam.sample(3, "train", np.random.default_rng(5))


def test_truncation_auto_resets_and_reports_final_obs():
    fam = _family(horizon=3)
    venv = fam.make(fam.sample(2, "train", np.random.default_rng(0)), 2, seed=0)
    obs0 = venv.reset(seed=1)
    act = torch.ones(4, 2)
    for t in range(3):
        obs, rew, cost, term, trunc, info = venv.step(act)
    assert bool(trunc.all()) and not bool(term.any())
    # the final observation is 3 steps of +0.1 from the start; the returned obs is a fresh start
    torch.testing.assert_close(info["final_obs"][:, :2], obs0[:, :2] + 0.3, atol=1e-5, rtol=0)
    assert float((obs[:, :2]).abs().max()) <= 0.05 + 1e-6
    torch.testing.assert_close(venv.reset(seed=1), obs0)  # seeded reset is reproducible


def test_reward_is_progress_and_cost_counts_hazard_steps():
    fam = _family(hazard_jitter=0.0)
    task = fam.sample(1, "train", np.random.default_rng(0))
    venv = fam.make(task, 1, seed=0)
    obs = venv.reset(0)
    goal_dir = obs[:, 2:4] / obs[:, 2:4].norm(dim=-1, keepdim=True)
    total_r, total_c = 0.0, 0.0
    for _ in range(10):  # straight at the goal: through the hazard disk of radius 0.2
        obs, r, c, *_ = venv.step(goal_dir)
        total_r += float(r)
        total_c += float(c)
    assert 0.9 < total_r <= 1.0 + 1e-5
    assert 3 <= total_c <= 5


def test_collector_batches_tasks_with_their_own_parameters():
    fam = _family()
    tasks = fam.sample(3, "train", np.random.default_rng(0))
    venv = fam.make(tasks, 5, seed=0)
    actor = GaussianActor(venv.obs_dim, venv.act_dim, (8,), "tanh", -0.5)
    params = {k: v.clone() for k, v in stack(init_params(actor), 3).items()}
    params["mean.2.bias"][1] = torch.tensor([5.0, 5.0])  # task 1 pushes hard to +x,+y
    params["log_std"][1] = torch.tensor([-5.0, -5.0])
    batch = Collector(actor).collect(params, venv, 2, torch.Generator().manual_seed(0))
    assert batch.obs.shape == (3, 2 * fam.horizon, 5, 6) and batch.rew.shape == (3, 40, 5)
    assert bool((batch.act[1] > 4.9).all()) and not bool((batch.act[0] > 4.9).all())
    assert torch.equal(batch.ep_count, torch.tensor([10.0, 10.0, 10.0]))
    assert int(batch.truncated.sum()) == 30
    # logp recorded equals the Gaussian log-density of the recorded action
    from safemeta.rollout.policy import batched, gaussian_log_prob
    mean, log_std = batched(actor)(params, batch.obs.reshape(3, -1, 6))
    lp = gaussian_log_prob(batch.act.reshape(3, -1, 2), mean, log_std).reshape(3, 40, 5)
    torch.testing.assert_close(lp, batch.logp, atol=1e-4, rtol=1e-4)
    pooled = batch.pooled()
    assert pooled.obs.shape == (1, 40, 15, 6) and float(pooled.ep_count) == 30.0
    torch.testing.assert_close(pooled.ep_return, batch.ep_return.mean().reshape(1))
