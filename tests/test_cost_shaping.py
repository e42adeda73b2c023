"""CPO's cost shaping (Achiam et al. 2017, Sec. 6.3): the hazard labels against a direct count, the
episode means against the collector's J_C, and the shaped constraint reaching the critics and solvers
while every report keeps the true cost."""
import numpy as np
import pytest
import torch

from safemeta.algorithms.inner.cpo import CPO, CPOConfig
from safemeta.rollout.batch import episode_means
from safemeta.rollout.cost_shaping import hazard_labels, shape
from safemeta.training.model import stacked_theta
from safemeta.training.trainer import MetaTrainer


def _labels_by_hand(cost, ends, horizon):
    n, t_len, e = cost.shape
    out = np.zeros((n, t_len, e))
    for i in range(n):
        for k in range(e):
            for t in range(t_len):
                total = 0.0
                for j in range(horizon):
                    if t + j >= t_len:
                        break
                    total += cost[i, t + j, k]
                    if ends[i, t + j, k]:  # the episode that holds t ends at t + j
                        break
                out[i, t, k] = min(1.0, max(0.0, total))
    return out


@pytest.mark.parametrize("horizon", [1, 3, 7])
def test_hazard_labels_count_the_cost_ahead_within_the_episode(horizon):
    g = torch.Generator().manual_seed(horizon)
    cost = (torch.rand(2, 40, 3, generator=g) < 0.15).float() * torch.rand(2, 40, 3, generator=g) * 1.5
    term = torch.rand(2, 40, 3, generator=g) < 0.05
    trunc = torch.rand(2, 40, 3, generator=g) < 0.05
    got = hazard_labels(cost, term, trunc, horizon)
    want = _labels_by_hand(cost.numpy(), (term | trunc).numpy(), horizon)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)
    assert bool((got >= cost.clamp(max=1.0) - 1e-6).all())  # the step's own cost counts


def test_episode_means_average_finished_episodes_only():
    x = torch.arange(1.0, 9.0).reshape(1, 8, 1).repeat(2, 1, 1)  # 1..8 along time, 2 tasks
    ends = torch.zeros(2, 8, 1, dtype=torch.bool)
    ends[0, 2, 0], ends[0, 5, 0] = True, True  # task 0: episodes 1+2+3 = 6, 4+5+6 = 15; 7, 8 unfinished
    truncated = torch.zeros_like(ends)
    truncated[1, 7, 0] = True  # task 1: one episode, cut by truncation: 36
    got = episode_means(x, ends, truncated)
    assert got.tolist() == [10.5, 36.0]
    assert episode_means(x, torch.zeros_like(ends), torch.zeros_like(ends)).tolist() == [0.0, 0.0]


def test_episode_means_match_the_collectors_episode_cost(rollout):
    _, batch = rollout(8)
    assert float(batch.ep_count.min()) >= 1
    torch.testing.assert_close(episode_means(batch.cost, batch.terminated, batch.truncated), batch.ep_cost)
    torch.testing.assert_close(episode_means(batch.rew, batch.terminated, batch.truncated), batch.ep_return)


def test_shaping_tightens_the_constraint_and_keeps_the_true_cost(make_config):
    plain = MetaTrainer(make_config(inner="cpo"))
    shaped = MetaTrainer(make_config(inner="cpo", critic={"cost_shaping_horizon": 5}))
    tasks = plain.family.sample(3, "train", np.random.default_rng(1))
    out = {}
    for name, t in (("plain", plain), ("shaped", shaped)):
        venv = t.family.make(tasks, 8, "cpu", 1)
        batch, _ = t.adapter.rollout(stacked_theta(t.meta, 3), venv, t.meta.critics_for(3), 1,
                                     torch.Generator().manual_seed(1))
        out[name] = batch
    p, s = out["plain"], out["shaped"]
    assert p.cost_bonus is None and s.cost_bonus is not None
    # the same samples and the same true J_C; only the constrained J grows, by the bonus
    torch.testing.assert_close(s.cost, p.cost)
    torch.testing.assert_close(s.ep_cost, p.ep_cost)
    assert bool((s.ep_cost_bonus > 0).all()) and bool((s.ep_constraint_cost > s.ep_cost).all())
    torch.testing.assert_close(s.ep_constraint_cost, episode_means(s.cost + s.cost_bonus, s.terminated, s.truncated))
    # the cost critic's targets are those of the shaped cost
    assert bool((s.ret_c.mean(dim=(1, 2)) > p.ret_c.mean(dim=(1, 2))).all())
    # CPO's constraint value b = J_{C+} - d
    cpo = CPO(CPOConfig(), shaped.actor)
    state = cpo.init_state(3, shaped.family.cost_limit)
    _, _, info = cpo.step(stacked_theta(shaped.meta, 3), s, state)
    torch.testing.assert_close(info["constraint_value"], s.ep_constraint_cost - state["cost_limit"])
    assert shape(s, 5) is s  # shaped once, not again by a second annotation
