"""Critic fitting: minibatch epochs, explained variance against Monte-Carlo returns, the critics'
initialization carried across meta-iterations by every method, and the logged diagnostics."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from safemeta.rollout.critics import CriticParams, FusedAdam, explained_variance
from safemeta.rollout.policy import CHUNK_ROWS, Critic, batched, critic_mse_grads, init_params
from safemeta.training.model import stacked_theta
from safemeta.rollout.params import stack
from safemeta.training.trainer import MetaTrainer


def goal_seeking(t: MetaTrainer, n: int) -> dict:
    """A fixed policy for tiny-nav: mean action ~ 2 tanh(tanh(g - x)) (straight at the goal, through the
    hazard disk half-way), std exp(-0.5): the values of its states vary with position, so a critic has
    something to explain."""
    p = {k: torch.zeros_like(v) for k, v in t.meta.theta.items()}
    p["mean.0.weight"][0, 2] = p["mean.0.weight"][1, 3] = 1.0  # obs = (x, g - x, h - x)
    p["mean.2.weight"][0, 0] = p["mean.2.weight"][1, 1] = 1.0
    p["mean.4.weight"][0, 0] = p["mean.4.weight"][1, 1] = 2.0
    p["log_std"] = torch.full_like(p["log_std"], -0.5)
    return stack(p, n)


def discounted_to_go(x: torch.Tensor, gamma: float) -> torch.Tensor:
    """Monte-Carlo return-to-go over dim 1 of ``[N, T, E]`` (one whole episode per env)."""
    out, running = torch.zeros_like(x), torch.zeros_like(x[:, 0])
    for step in range(x.shape[1] - 1, -1, -1):
        running = x[:, step] + gamma * running
        out[:, step] = running
    return out


def test_fitted_critics_explain_monte_carlo_returns_on_fresh_episodes(make_config):
    """Fit on one batch of a fixed policy, score on another against Monte-Carlo returns: with the default
    fitting (10 epochs of 256-sample minibatches, at most 40 steps) EV >= 0.8 for V_R and >= 0.6 for V_C
    (measured per task: 0.82-0.91 and 0.66-0.71; V_C's targets are binary hazard hits, noisier), where the
    unfitted critics explain little (EV < 0.3; measured -0.42 to 0.17)."""
    t = MetaTrainer(make_config(trainer={"envs_per_task": 32},
                                critic={"epochs": 10, "minibatch_size": 256, "max_minibatches": 40, "lr": 3e-3,
                                        "gamma": 0.9, "cost_gamma": 0.9}))
    n = 4
    theta = goal_seeking(t, n)
    venv = t.family.make(t.family.sample(n, "train", np.random.default_rng(0)), 64, "cpu", 0)
    gen = torch.Generator().manual_seed(0)
    fit_on = t.adapter.collector.collect(theta, venv, 1, gen)
    fresh = t.adapter.collector.collect(theta, venv, 1, gen)
    assert float(fresh.cost.sum()) > 0  # the policy crosses the hazard
    start = t.meta.critics_for(n)
    _, fitted = t.critics.fit_and_annotate(fit_on, start)
    flat = lambda x: x.reshape(n, -1)  # noqa: E731
    for critic, label in ((fitted, "fitted"), (start, "initial")):
        with torch.no_grad():
            ev_r = explained_variance(flat(t.critics.values(critic.reward, fresh.obs)),
                                      flat(discounted_to_go(fresh.rew, 0.9)))
            ev_c = explained_variance(flat(t.critics.values(critic.cost, fresh.obs)),
                                      flat(discounted_to_go(fresh.cost, 0.9)))
        if label == "fitted":
            assert float(ev_r.min()) >= 0.8 and float(ev_c.min()) >= 0.6, (ev_r, ev_c)
        else:
            assert float(ev_r.max()) < 0.3 and float(ev_c.max()) < 0.3, (ev_r, ev_c)


def test_minibatches_cover_every_sample_once_per_epoch_and_respect_the_cap(make_config):
    t = MetaTrainer(make_config(critic={"epochs": 3, "minibatch_size": 30, "max_minibatches": 0}))
    steps = t.critics.minibatches(100)
    assert len(steps) == 3 * 4
    for epoch in range(3):
        seen = torch.cat(steps[4 * epoch:4 * epoch + 4])
        assert sorted(seen.tolist()) == list(range(100))
    assert steps[0].tolist() != list(range(30))  # shuffled
    t.critics.cfg.max_minibatches = 5
    assert len(t.critics.minibatches(100)) == 5
    t.critics.cfg.minibatch_size = 0
    assert [len(i) for i in t.critics.minibatches(100)] == [100, 100, 100]


def test_fused_fit_equals_separate_reward_and_cost_fits(make_config, rollout):
    """V_R and V_C are fitted as one [2N] stack; Adam is elementwise, so each half equals a fit of that
    critic alone (the same fit with the other critic's targets zeroed changes only that other half)."""
    t, batch = rollout(16)
    start = t.meta.critics_for(3)
    fitted = t.critics.fit(batch, start)
    zero_cost = t.critics.fit(batch.with_advantages(batch.adv_r, batch.adv_c, batch.ret_r, torch.zeros_like(batch.ret_c)),
                              start)
    for k in fitted.reward:
        torch.testing.assert_close(fitted.reward[k], zero_cost.reward[k])
    assert any(not torch.equal(fitted.cost[k], zero_cost.cost[k]) for k in fitted.cost)


def test_a_fit_on_the_closed_form_gradient_equals_the_autograd_fit_bit_for_bit(make_config, rollout, monkeypatch):
    """A whole critic fit (shuffled minibatches, FusedAdam, V_R and V_C stacked) ends at the same critics whether
    its steps take `critic_mse_grads` or autograd's gradient; and the fit moves them."""
    t, batch = rollout(16)
    start = t.meta.critics_for(3)
    assert t.critics.closed_grads is not None
    closed = t.critics.fit(batch, start)
    monkeypatch.setattr(t.critics, "closed_grads", None)  # every step through autograd
    autograd = t.critics.fit(batch, start)
    for name in ("reward", "cost"):
        for k, v in getattr(closed, name).items():
            assert torch.equal(v, getattr(autograd, name)[k]), (name, k)
            assert not torch.equal(v, getattr(start, name)[k]), (name, k)


def test_fused_adam_steps_as_torch_adam_bit_for_bit_with_transposed_gradients():
    """The critic fit's `FusedAdam` is torch.optim.Adam(fused=True) without its bookkeeping: 30 steps on a
    stacked tanh MLP whose weights enter transposed (their gradients are not contiguous, which the kernel would
    misread) end at the same parameters bit for bit."""
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(4, 16, 8, generator=gen), torch.randn(4, 16, generator=gen), torch.randn(4, 1, 16, generator=gen)]
    x, y = torch.randn(4, 32, 8, generator=gen), torch.randn(4, 32, 1, generator=gen)

    def loss(w1, b1, w2):
        h = torch.tanh(torch.baddbmm(b1.unsqueeze(1), x, w1.transpose(1, 2)))
        return (torch.bmm(h, w2.transpose(1, 2)) - y).pow(2).mean()

    ours = [p.clone().requires_grad_(True) for p in start]
    theirs = [p.clone().requires_grad_(True) for p in start]
    adam, opt = FusedAdam(ours, 3e-3), torch.optim.Adam(theirs, lr=3e-3, fused=True)
    for _ in range(30):
        grads = torch.autograd.grad(loss(*ours), ours)
        assert not grads[0].is_contiguous()
        adam.step(grads)
        opt.zero_grad()
        loss(*theirs).backward()
        opt.step()
    for a, b, s in zip(ours, theirs, start):
        assert torch.equal(a, b) and not torch.equal(a, s)


@pytest.mark.parametrize("activation,hidden,rows,samples,dim", [
    ("tanh", (64, 64), 10, 256, 52), ("tanh", (32,), 3, 200, 7), ("relu", (64, 64), 6, 256, 28),
    ("elu", (16, 8, 4), 2, 37, 5), ("tanh", (), 4, 64, 3)])
def test_closed_form_critic_gradient_is_autograds_bit_for_bit(activation, hidden, rows, samples, dim):
    """`critic_mse_grads` (the critic fit's Adam steps) against autograd through the fit's own loss: the same
    gradients bit for bit, for every activation, depth and a non-power-of-two minibatch; None (autograd's turn)
    for a minibatch that the forward pass would run in chunks."""
    gen = torch.Generator().manual_seed(rows * samples)
    critic = Critic(dim, hidden, activation)
    params = {k: (v + 0.3 * torch.randn(v.shape, generator=gen)).requires_grad_(True)
              for k, v in stack(init_params(critic), rows).items()}
    x, target = torch.randn(rows, samples, dim, generator=gen), 3.0 * torch.randn(rows, samples, generator=gen)
    loss = (batched(critic)(params, x) - target).pow(2).mean(dim=1).sum()
    expected = torch.autograd.grad(loss, list(params.values()))
    got = critic_mse_grads(critic)(params, x, target)
    assert len(got) == len(expected)
    for k, a, b in zip(params, got, expected):
        assert a.shape == b.shape and torch.equal(a, b), k
        assert a.abs().sum() > 0, k
    wide = torch.randn(rows, CHUNK_ROWS + 1, dim, generator=gen)
    assert critic_mse_grads(critic)(params, wide, torch.zeros(rows, CHUNK_ROWS + 1)) is None


@pytest.mark.parametrize("algo", ["fomaml_trpo", "pretrained", "c_maml", "meta_cpo", "meta_srl"])
def test_every_method_carries_the_critics_initialization_into_the_next_iteration_and_meta_test(make_config, algo):
    t = MetaTrainer(make_config(algo=algo))
    init = {k: v.clone() for k, v in t.meta.critic_reward.items()}
    init_c = {k: v.clone() for k, v in t.meta.critic_cost.items()}
    metrics = t.train_iteration()
    assert any(not torch.equal(init[k], t.meta.critic_reward[k]) for k in init)
    assert any(not torch.equal(init_c[k], t.meta.critic_cost[k]) for k in init_c)
    handed: CriticParams = t.outer.initial_critics(2)
    for k, v in t.meta.critic_reward.items():
        torch.testing.assert_close(handed.reward[k], v.expand(2, *v.shape))
    for key in ("critic/ev_reward", "critic/ev_cost", "critic/meta_ev_reward", "critic/meta_ev_cost"):
        assert np.isfinite(metrics[key]) and metrics[key] <= 1.0


def test_explained_variance_is_logged_to_metrics_csv(make_config):
    import safemeta

    run = safemeta.train(make_config())
    rows = list(csv.DictReader((run.path / "metrics.csv").open()))
    assert all(np.isfinite(float(r["critic/ev_reward"])) and np.isfinite(float(r["critic/ev_cost"])) for r in rows)
    assert float(rows[-1]["critic/ev_reward"]) > 0.0


def test_annotation_evaluates_next_states_only_where_they_differ_and_matches_a_full_evaluation(make_config):
    """`state_values` reuses V(obs[t+1]) for V(next_obs[t]) and evaluates next_obs only at episode ends and the
    rollout's end: the advantages and returns equal those of evaluating every next_obs (three episodes per env,
    so truncations fall inside the rollout)."""
    from safemeta.rollout.batch import gae

    t = MetaTrainer(make_config())
    venv = t.family.make(t.family.sample(3, "train", np.random.default_rng(2)), 4, "cpu", 2)
    batch = t.adapter.collector.collect(stacked_theta(t.meta, 3), venv, 3, torch.Generator().manual_seed(2))
    assert int(batch.truncated[:, :-1].sum()) > 0
    params = t.meta.critics_for(3)
    fast = t.critics.annotate(batch, params)
    cfg = t.critics.cfg
    with torch.no_grad():
        full = {name: [t.critics.values(getattr(params, name), o) for o in (batch.obs, batch.next_obs)]
                for name in ("reward", "cost")}
    adv_r, ret_r = gae(batch.rew, *full["reward"], batch.terminated, batch.truncated, cfg.gamma, cfg.lam)
    adv_c, ret_c = gae(batch.cost, *full["cost"], batch.terminated, batch.truncated, cfg.cost_gamma, cfg.cost_lam)
    for got, want in ((fast.adv_r, adv_r), (fast.ret_r, ret_r), (fast.adv_c, adv_c), (fast.ret_c, ret_c)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_explained_variance_is_zero_where_the_targets_do_not_vary():
    target = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 2.0]])
    pred = torch.tensor([[0.0, 2.0, 5.0], [0.0, 1.0, 2.0]])
    assert explained_variance(pred, target).tolist() == [0.0, 1.0]


def test_a_run_saved_with_critic_iters_loads_as_the_same_full_batch_fit(make_config, tmp_path):
    import yaml

    from safemeta.config.loader import load_config, save_config

    path = tmp_path / "config.yaml"
    save_config(make_config(), path)
    data = yaml.safe_load(path.read_text())
    for key in ("epochs", "minibatch_size", "max_minibatches", "meta_max_minibatches"):
        data["critic"].pop(key)
    data["critic"]["iters"] = 7
    path.write_text(yaml.safe_dump(data))
    with pytest.warns(UserWarning, match="critic.iters"):
        cfg = load_config(path)
    c = cfg.critic
    assert (c.epochs, c.minibatch_size, c.max_minibatches, c.meta_max_minibatches) == (7, 0, 0, 0)
    t = MetaTrainer(cfg)
    assert [len(i) for i in t.critics.minibatches(50)] == [50] * 7
