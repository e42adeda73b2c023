"""Regression tests, one per defect of the public Meta-CPO code that `dco_cpo` must not repeat
(issue 6): shared meta/local policy, reused first samples, GAE across truncations, identical episode
seeds, tasks never resampled, cost limit annealed in place, diagonal / accumulating meta-gradient."""
import numpy as np
import pytest
import torch

from safemeta.algorithms.outer.dco_cpo import meta_gradients
from safemeta.rollout.batch import gae
from safemeta.training.model import stacked_theta
from safemeta.rollout.params import flat, stack
from safemeta.training.trainer import MetaTrainer

K, M = 2, 2


@pytest.fixture
def trainer(make_config):
    return MetaTrainer(make_config(algo="meta_cpo", policy={"hidden_sizes": [8]},
                                   trainer={"tasks_per_iter": M, "adapt_steps": K, "envs_per_task": 4}))


def _adapt(t, seed=0):
    venv = t.family.make(t.family.sample(M, "train", np.random.default_rng(seed)), 4, "cpu", seed)
    state = t.inner.init_state(M, t.family.cost_limit_for("train"))
    return t.adapter.adapt(stacked_theta(t.meta, M, keep_graph=True), venv, K, state, t.meta.critics_for(M), 1,
                           torch.Generator().manual_seed(seed), differentiable=True)


def _theta(t):
    return flat(stack({k: v.detach().clone() for k, v in t.meta.theta.items()}, 1))


def test_local_steps_do_not_overwrite_theta(trainer):
    """Reference bug: one policy object for meta and local learners, so local steps overwrote theta."""
    before = _theta(trainer)
    result = _adapt(trainer)
    torch.testing.assert_close(_theta(trainer), before, rtol=0, atol=0)
    for k in range(1, K + 1):
        assert float((flat(result.params[k]).detach() - before).abs().max()) > 0  # the local learners moved
    trainer.outer.update(result, [])
    assert float((_theta(trainer) - before).abs().max()) > 0  # only the meta step moves theta


def test_every_local_step_samples_the_current_local_policy(trainer):
    """Reference bug: every local step reused the meta-policy's first samples."""
    result = _adapt(trainer)
    for k, batch in enumerate(result.batches):
        with torch.no_grad():
            logp = trainer.inner.log_prob(result.params[k], batch)
        torch.testing.assert_close(logp, batch.logp, atol=1e-4, rtol=1e-4)  # sampled by phi^k
        if k:
            assert not torch.equal(batch.obs, result.batches[0].obs)


def test_gae_does_not_run_across_time_limit_truncations():
    """Reference bug: GAE ran across time-limit truncations into the next episode."""
    rew = torch.tensor([[[1.0], [2.0], [3.0], [4.0]]])  # [N=1, T=4, E=1]; episode 1 = t 0-1, truncated at t 1
    truncated = torch.tensor([[[False], [True], [False], [True]]])
    terminated = torch.zeros_like(truncated)
    value, next_value = torch.zeros_like(rew), torch.full_like(rew, 10.0)
    adv, _ = gae(rew, value, next_value, terminated, truncated, gamma=0.9, lam=0.95)
    adv2, _ = gae(rew * torch.tensor([1.0, 1.0, 100.0, 100.0]).reshape(1, 4, 1), value, next_value,
                  terminated, truncated, gamma=0.9, lam=0.95)
    torch.testing.assert_close(adv[:, :2], adv2[:, :2])  # episode 1 does not see episode 2's rewards
    assert float(adv[0, 1, 0]) == pytest.approx(2.0 + 0.9 * 10.0)  # a truncation bootstraps V(s_T)


def test_episodes_are_not_identically_seeded(trainer):
    """Reference bug: every episode started from the same seed."""
    a, b = _adapt(trainer, seed=0), _adapt(trainer, seed=0)
    starts = [batch.obs[:, 0] for batch in a.batches]
    assert not torch.equal(starts[0], starts[1])  # successive rollouts of the same tasks start elsewhere
    assert not torch.equal(starts[0][:, 0], starts[0][:, 1])  # so do the envs of one task
    torch.testing.assert_close(a.batches[0].obs, b.batches[0].obs)  # yet all of it follows the run's seed


def test_tasks_are_resampled_every_iteration(trainer):
    """Reference bug: the training tasks were drawn once and never resampled."""
    seen = []
    original = trainer.outer.update
    trainer.outer.update = lambda result, tasks: (seen.append([t.params for t in tasks]), original(result, tasks))[1]
    for _ in range(3):
        trainer.train_iteration()
    assert len({repr(ts) for ts in seen}) == 3


def test_cost_limit_is_never_annealed_in_place(make_config):
    """Reference bug: the cost limit was annealed in place, so later tasks (and the test) saw another d."""
    t = MetaTrainer(make_config(algo="meta_cpo", env="car-circle-hazard", policy={"hidden_sizes": [8]},
                                env_cfg={"car-circle-hazard": {"horizon": 20}},
                                trainer={"tasks_per_iter": 2, "adapt_steps": 1, "envs_per_task": 2}))
    limits = []
    original = t.outer.update
    t.outer.update = lambda result, tasks: (limits.append(result.state["cost_limit"].clone()),
                                            limits.append(result.initial_state["cost_limit"].clone()),
                                            original(result, tasks))[2]
    for _ in range(2):
        t.train_iteration()
    assert all(torch.equal(d, torch.full((2,), 10.0)) for d in limits)
    assert t.family.cost_limit_for("train") == 10.0 and t.family.cost_limit_for("test") == 5.0


def test_meta_gradient_is_recomputed_not_accumulated(trainer):
    """Reference bug: a per-element diagonal meta-gradient whose .grad accumulated across calls. The full
    vector-Jacobian product is checked against finite differences in test_meta_cpo.py; here: two calls on
    the same adaptation give the same result and leave theta's .grad untouched."""
    result = _adapt(trainer)
    first = meta_gradients(trainer.inner, trainer.meta.theta, result)
    second = meta_gradients(trainer.inner, trainer.meta.theta, result)
    for x, y in zip(first, second):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert all(p.grad is None for p in trainer.meta.theta.values())
