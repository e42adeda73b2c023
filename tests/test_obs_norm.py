"""Observation normalization (policy.obs_normalize): running moments equal the batch moments of every
raw observation seen in meta-training, change only between iterations, skip meta-test rollouts and
survive a checkpoint."""
import numpy as np
import torch

from safemeta.rollout.obs_norm import RunningObsNorm
from safemeta.training.trainer import MetaTrainer
from safemeta.evaluation.meta_test import evaluate


def test_running_moments_equal_the_moments_of_all_data():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(3.0, 2.0, size=(n, 4)) * [1, 10, 0.1, 1] for n in (7, 100, 33)]
    norm = RunningObsNorm(4, clip=1e9)
    for c in chunks:
        norm.observe(torch.as_tensor(c, dtype=torch.float32))
        norm.commit()
    data = np.concatenate(chunks)
    np.testing.assert_allclose(norm.mean.numpy(), data.mean(0), rtol=1e-5)
    np.testing.assert_allclose(norm.var.numpy(), data.var(0), rtol=1e-4)
    z = norm(torch.as_tensor(data, dtype=torch.float32))
    np.testing.assert_allclose(z.mean(0).numpy(), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(0, unbiased=False).numpy(), 1.0, atol=1e-3)
    assert RunningObsNorm(4, clip=2.0)(torch.full((1, 4), 100.0)).max() == 2.0


def test_trainer_normalizes_between_iterations_and_not_at_meta_test(make_config):
    t = MetaTrainer(make_config(policy={"obs_normalize": True}))
    assert t.obs_norm.count == 0
    t.train_iteration()
    first = t.obs_norm.state_dict()
    assert first["count"] > 0 and not torch.allclose(first["var"], torch.ones_like(first["var"]))
    evaluate(t, tasks=2, adapt_steps=1)
    torch.testing.assert_close(t.obs_norm.state_dict()["mean"], first["mean"])  # meta-test leaves it alone
    t.train_iteration()
    state = t.state_dict()
    fresh = MetaTrainer(make_config(policy={"obs_normalize": True}))
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.obs_norm.mean, t.obs_norm.mean)
    assert fresh.obs_norm.count == t.obs_norm.count
    # what the policy acts on is the normalized observation
    obs = torch.randn(3, t.obs_dim)
    p = {k: v.detach() for k, v in t.meta.theta.items()}
    expected, _ = torch.func.functional_call(t.actor, p, (t.obs_norm(obs),))
    torch.testing.assert_close(t.act(obs), expected)


def test_collected_batches_hold_normalized_observations(make_config):
    t = MetaTrainer(make_config(policy={"obs_normalize": True, "obs_clip": 1.5}))
    for _ in range(2):
        t.train_iteration()
    venv = t.family.make(t.family.sample(2, "train", np.random.default_rng(0)), 4, "cpu", 0)
    from safemeta.training.model import stacked_theta

    batch = t.adapter.collector.collect(stacked_theta(t.meta, 2), venv, 1, torch.Generator().manual_seed(0))
    assert batch.obs.abs().max() <= 1.5 + 1e-6
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=torch.Generator().manual_seed(0)))  # the collector's
    raw0 = t.family.make(t.family.sample(2, "train", np.random.default_rng(0)), 4, "cpu", 0).reset(seed)
    torch.testing.assert_close(batch.obs[:, 0].reshape(8, -1), t.obs_norm(raw0))
    assert not torch.allclose(t.obs_norm(raw0), raw0)
