"""Meta-CPO (`dco_cpo`): the K = 2 meta-gradient through differentiable CPO steps against central finite
differences of the post-adaptation objective with the rollouts held fixed, for every backend, and the first-order
one against the task-mean policy gradient at phi computed by hand; the backends agree with each other; the meta
step respects its trust region and linearized constraint (Euclidean), and in the Fisher metric with the replay
line search its KL bound and acceptance rule, shortening the steps that break them; task critics start from the
carried initialization; the discounted constraint against a hand computation."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from safemeta.training.adaptation import AdaptationResult, replay
from safemeta.algorithms.outer.dco_cpo import meta_gradients, post_adaptation_objectives
from safemeta.rollout.params import flat, stack, unflat
from safemeta.training.trainer import MetaTrainer
from safemeta.evaluation.meta_test import evaluate

K, M = 2, 2
BACKENDS = [("analytic", "fisher"), ("analytic", "euclidean"), ("cvxpylayers", "euclidean"), ("qpth", "euclidean")]
# the Fisher path two ways: CG solves differentiated implicitly (exact for a converged CG: 200 iterations here)
# and by backpropagating through 10 CG iterations (the gradient of exactly the function evaluated)
FISHER = {"implicit": {"cg_grad": "implicit", "cg_iters": 200}, "unrolled": {"cg_grad": "unrolled", "cg_iters": 10}}


def _trainer(make_config, backend="analytic", metric="fisher", cost_limit=None, cg=None, **outer):
    env_cfg = {} if cost_limit is None else {"env_cfg": {"tiny-nav": {"cost_limit": cost_limit}}}
    # init_log_std -0.5: the meta-gradient is of a piecewise-smooth function (each line search's accepted
    # fraction is piecewise constant in theta); at the default std 1 this fixture's theta sits at a backtracking
    # boundary of one Fisher step (fraction 0 at theta, 0.044 at theta + 1e-5 v), where central differences
    # straddle the jump. The test checks the gradient away from kinks.
    cfg = make_config(algo="meta_cpo", policy={"hidden_sizes": [8], "init_log_std": -0.5},
                      trainer={"tasks_per_iter": M, "adapt_steps": K, "envs_per_task": 4},
                      inner_cfg={"cpo": {"backend": backend, "metric": metric, "max_kl": 0.02, **(cg or {})}},
                      outer_cfg={"dco_cpo": {"metric": "euclidean", **outer}}, **env_cfg)
    return MetaTrainer(cfg)


@pytest.fixture(scope="module")
def fixed_rollouts(tmp_path_factory):
    """K + 1 batches of M tiny-nav tasks collected by one real adaptation, in float64, and theta."""
    from conftest import fixed_adaptation, tiny_config

    t = _trainer(lambda **o: tiny_config(tmp_path_factory.mktemp("mc"), **o))
    return (t, *fixed_adaptation(t, M, K))


def _post_adaptation(t, theta, batches, state, differentiable):
    phi = replay(t.inner, stack(theta, M), batches[:K], dict(state), differentiable=differentiable)
    return phi, post_adaptation_objectives(t.inner, phi, batches[K], state)


def _meta_grads(t, theta, batches, state):
    theta = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
    phi, _ = _post_adaptation(t, theta, batches, state, differentiable=True)
    result = AdaptationResult([stack(theta, M), phi], batches, state, None)
    return meta_gradients(t.inner, theta, result)


@pytest.mark.parametrize("backend,metric,cg", [(b, m, c) for b, m in BACKENDS for c in (FISHER if m == "fisher" else [None])])
def test_meta_gradient_matches_finite_differences(fixed_rollouts, make_config, backend, metric, cg):
    base, batches, state, theta = fixed_rollouts
    t = _trainer(make_config, backend, metric, cg=FISHER.get(cg))
    grad_f, grad_g, _, _ = _meta_grads(t, theta, batches, state)
    theta1 = stack(theta, 1)
    gen = torch.Generator().manual_seed(0)
    eps = 1e-5
    for _ in range(3):
        v = torch.randn(grad_f.shape, dtype=torch.float64, generator=gen)
        vals = []
        for sign in (1, -1):
            moved = {k: x[0] for k, x in unflat(flat(theta1) + sign * eps * v, theta1).items()}
            with torch.no_grad():
                _, (f, g) = _post_adaptation(t, moved, batches, state, differentiable=False)
            vals.append((f.mean(), g.mean()))
        fd_f = (vals[0][0] - vals[1][0]) / (2 * eps)
        fd_g = (vals[0][1] - vals[1][1]) / (2 * eps)
        torch.testing.assert_close((grad_f * v).sum(), fd_f, rtol=2e-3, atol=1e-6)
        torch.testing.assert_close((grad_g * v).sum(), fd_g, rtol=2e-3, atol=1e-5)


def _log_prob_by_hand(actor, params, obs, act):
    """log pi(a|s) of the Gaussian actor for unstacked ``params``, written out (not `InnerSolver.log_prob`)."""
    mean, log_std = torch.func.functional_call(actor, params, (obs,))
    return (-0.5 * ((act - mean) / log_std.exp()) ** 2 - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)


def test_first_order_meta_gradient_is_the_task_mean_policy_gradient_at_phi(fixed_rollouts, make_config):
    """``meta_grad: first_order`` is 1/M sum_p grad_phi of F_p and G_p at phi_p^K, here computed per task by the
    score-function form E[ratio * grad log pi * A] with A_R standardized and A_C centered times steps per episode,
    by hand; the full meta-gradient (checked against finite differences above) is not it."""
    base, batches, state, theta = fixed_rollouts
    t = _trainer(make_config)
    phi, _ = _post_adaptation(t, theta, batches, state, differentiable=False)
    result = AdaptationResult([stack(theta, M), phi], batches, state, None)
    fo_f, fo_g, _, _ = meta_gradients(t.inner, theta, result, first_order=True)
    batch = batches[K]
    expected = {"f": 0, "g": 0}
    for p in range(M):
        params = {k: v[p].detach().clone().requires_grad_(True) for k, v in phi.items()}
        obs, act = batch.obs[p].reshape(-1, batch.obs.shape[-1]), batch.act[p].reshape(-1, batch.act.shape[-1])
        logp = _log_prob_by_hand(t.actor, params, obs, act)
        ratio = torch.exp(logp.detach() - batch.logp[p].reshape(-1))
        adv_r = batch.adv_r[p].reshape(-1)
        adv_r = (adv_r - adv_r.mean()) / (adv_r.std() + 1e-8)
        steps_per_episode = adv_r.numel() / max(float(batch.ep_count[p]), 1)
        adv_c = (batch.adv_c[p] - batch.adv_c[p].mean()).reshape(-1) * steps_per_episode
        for name, adv in (("f", adv_r), ("g", adv_c)):
            grads = torch.autograd.grad((ratio * logp * adv).mean(), list(params.values()), retain_graph=True)
            expected[name] = expected[name] + torch.cat([gr.reshape(-1) for gr in grads]) / M
    torch.testing.assert_close(fo_f[0], expected["f"], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(fo_g[0], expected["g"], rtol=1e-6, atol=1e-9)
    full_f, _, _, _ = _meta_grads(t, theta, batches, state)
    assert float((full_f - fo_f).norm()) > 0.1 * float(full_f.norm()), float((full_f - fo_f).norm() / full_f.norm())


def test_backends_agree_on_the_meta_gradient(fixed_rollouts, make_config):
    _, batches, state, theta = fixed_rollouts
    grads = {b: _meta_grads(_trainer(make_config, b, "euclidean"), theta, batches, state)[:2]
             for b, m in BACKENDS if m == "euclidean"}
    for backend in ("cvxpylayers", "qpth"):
        for mine, ref in zip(grads[backend], grads["analytic"]):
            torch.testing.assert_close(mine, ref, rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("cost_limit,paid,cases", [(1e6, None, {3, 4}), (0.0, None, {1, 2}), (0.0, 50.0, {0})])
def test_meta_step_respects_trust_region_and_linearized_constraint(make_config, cost_limit, paid, cases):
    """A slack limit (constraint inactive), a tight one reachable within the trust region (the dual
    solution on the linearized boundary) and, with the post-adaptation cost set far over it, one that
    is not (the eq. 4 recovery step)."""
    delta = 5e-3
    t = _trainer(make_config, cost_limit=cost_limit, max_kl=delta, replay_line_search=False)
    before = flat(stack({k: v.detach().clone() for k, v in t.meta.theta.items()}, 1))
    captured = {}
    original = t.outer.update

    def spy(result, tasks):
        if paid is not None:
            result.batches[-1] = replace(result.batches[-1], ep_cost=torch.full((M,), paid))
        captured.update(zip(("f", "g", "F", "G"), meta_gradients(t.inner, t.meta.theta, result)))
        return original(result, tasks)

    t.outer.update = spy
    m = t.train_iteration()
    step = flat(stack({k: v.detach() for k, v in t.meta.theta.items()}, 1)) - before
    assert m["meta/case"] in cases  # no line search here (Euclidean, no replay): the Fisher test below has it
    assert 0.5 * float((step**2).sum()) <= delta * (1 + 1e-4)  # Euclidean trust region of eq. 12
    linear_change = float((captured["g"] * step).sum())
    if m["meta/case"] == 0:
        assert linear_change < 0  # eq. 4: the recovery step only lowers G
    else:
        assert float(captured["G"]) + linear_change <= 1e-4 * abs(float(captured["G"])) + 1e-6
        assert float((captured["f"] * step).sum()) > 0  # and ascends F


def _kl_by_hand(actor, old, new, obs):
    """Mean over ``obs`` of KL(pi_old || pi_new) for diagonal Gaussians, written out."""
    m0, s0 = torch.func.functional_call(actor, old, (obs,))
    m1, s1 = torch.func.functional_call(actor, new, (obs,))
    return (s1 - s0 + (torch.exp(2 * s0) + (m0 - m1) ** 2) / (2 * torch.exp(2 * s1)) - 0.5).sum(-1).mean()


@pytest.mark.parametrize("max_kl,seed,cost_limit,paid,cases,rejects", [
    (0.01, 0, 1.0, None, {3}, None),  # the constraint slack: a TRPO step, taken whole
    (0.01, 0, 0.0, None, {1, 2}, None),  # the constraint active: the dual step
    (0.5, 0, 0.0, 50.0, {0}, "kl"),  # a recovery step whose full length leaves the trust region in exact KL
    (0.01, 1, 0.0, 50.0, {0}, "replay"),  # a recovery step whose longer fractions raise the replayed G
])
def test_fisher_meta_step_and_its_replay_line_search(make_config, max_kl, seed, cost_limit, paid, cases, rejects):
    """The meta step of eq. 12 in the Fisher metric with the replay line search (the default): the full step x
    (taken / fraction) lies on the trust-region boundary 1/2 x^T (H + damping) x = delta_theta with H the Hessian
    of the KL on the pooled batch 0 (by autograd, not CG) and (H + damping) x along the CPO direction; the step
    taken has exact KL <= delta_theta on batch 0 and replayed objectives within the acceptance rule; every longer
    fraction of x breaks the KL bound or the rule. Two fixtures are shortened, one by each check."""
    damping, decay = 0.1, 0.8
    t = MetaTrainer(make_config(algo="meta_cpo", seed=seed, policy={"hidden_sizes": [8], "init_log_std": -0.5},
                                trainer={"tasks_per_iter": M, "adapt_steps": K, "envs_per_task": 4},
                                inner_cfg={"cpo": {"max_kl": 0.02}}, env_cfg={"tiny-nav": {"cost_limit": cost_limit}},
                                outer_cfg={"dco_cpo": {"metric": "fisher", "max_kl": max_kl, "cg_iters": 100,
                                                       "cg_damping": damping, "backtrack_decay": decay}}))
    assert t.outer.cfg.replay_line_search
    before = {k: v.detach().clone() for k, v in t.meta.theta.items()}
    captured = {}
    original = t.outer.update

    def spy(result, tasks):
        if paid is not None:  # the post-adaptation cost far over d: the eq. 4 recovery step
            result.batches[-1] = replace(result.batches[-1], ep_cost=torch.full((M,), paid))
        captured.update(zip(("f", "g", "F", "G"), meta_gradients(t.inner, t.meta.theta, result)), result=result)
        return original(result, tasks)

    t.outer.update = spy
    m = t.train_iteration()
    assert m["meta/case"] in cases, m["meta/case"]
    result, frac, recovery = captured["result"], m["meta/step_fraction"], m["meta/case"] == 0
    assert 0 < frac <= 1
    after = {k: v.detach().clone() for k, v in t.meta.theta.items()}
    full = (flat(stack(after, 1)) - flat(stack(before, 1)))[0] / frac
    obs = result.batches[0].pooled().obs.reshape(-1, result.batches[0].obs.shape[-1])

    def unstacked(vec):
        return {k: v[0] for k, v in unflat(vec.unsqueeze(0), stack(before, 1)).items()}

    # the Fisher metric, from the Hessian of the exact KL at theta
    def kl_at(vec):
        return _kl_by_hand(t.actor, before, unstacked(vec), obs)

    theta_vec = flat(stack(before, 1))[0]
    h = torch.autograd.functional.hessian(kl_at, theta_vec) + damping * torch.eye(theta_vec.numel())
    assert 0.5 * float(full @ h @ full) == pytest.approx(max_kl, rel=2e-3)
    if cases == {1, 2}:  # the linearized meta constraint of eq. 12 holds at the full step
        assert float(captured["G"]) + float(captured["g"][0] @ full) <= 1e-4 * abs(float(captured["G"])) + 1e-6
    else:  # H x along -dG (recovery) or dF (TRPO step)
        direction = -captured["g"][0] if recovery else captured["f"][0]
        hx = h @ full
        assert float(hx @ direction / (hx.norm() * direction.norm())) > 0.999

    def replayed(vec):
        phi = replay(t.inner, stack(unstacked(vec), M), result.batches[:-1], dict(result.initial_state))
        with torch.no_grad():
            f, g = post_adaptation_objectives(t.inner, phi, result.batches[-1], result.state)
        return float(f.mean()), float(g.mean())

    f0, g0 = replayed(theta_vec)
    allowed = max(-float(captured["G"]), 0.0)

    def verdict(fraction):
        vec = theta_vec + fraction * full
        with torch.no_grad():
            kl = float(kl_at(vec))
        f1, g1 = replayed(vec)
        return {"kl": kl <= max_kl, "replay": g1 - g0 <= allowed and (recovery or f1 >= f0)}

    taken = verdict(frac)
    assert all(taken.values()), taken
    longer = [decay**j for j in range(20) if decay**j > frac * (1 + 1e-6)]
    for fraction in longer:
        assert not all(verdict(fraction).values()), fraction
    if rejects is None:
        assert frac == 1.0
    else:
        assert longer and not verdict(1.0)[rejects], (frac, verdict(1.0))


def test_task_critics_start_from_the_carried_initialization(make_config, monkeypatch):
    """Issue 18, item 5: every adaptation of a meta_cpo run, in training and at meta-test, starts its task critics
    from the critics' initialization the trainer carries (fitted on the meta-policy's rollouts), not from a random
    init: after one iteration that initialization has moved, and iteration 2 and the meta-test start from it."""
    from safemeta.training.adaptation import Adapter

    t = _trainer(make_config)
    starts = []
    original = Adapter.adapt

    def spy(self, init, venv, steps, state, critic_params, *args, **kwargs):
        starts.append({k: v.clone() for k, v in critic_params.stacked().items()})
        return original(self, init, venv, steps, state, critic_params, *args, **kwargs)

    def carried(n):
        return {k: v.clone() for k, v in t.meta.critics_for(n).stacked().items()}

    def equal(x, y):
        return all(torch.equal(x[k], y[k]) for k in x)

    monkeypatch.setattr(Adapter, "adapt", spy)
    init = carried(M)
    t.train_iteration()
    assert len(starts) == 1 and equal(starts[0], init)
    after_one = carried(M)
    assert not equal(after_one, init)  # fitted on the iteration's rollouts
    t.train_iteration()
    assert len(starts) == 2 and equal(starts[1], after_one)
    evaluate(t, tasks=2, adapt_steps=1)
    assert len(starts) == 3 and equal(starts[2], carried(2))


GAMMA_C = 0.9


def _small_batch(t, gen):
    """2 tasks x 6 steps x 2 envs by hand: episodes cut by truncations and terminations, unfinished tails, costs
    in {0, 1, 2, 3}; logp from theta (so theta is the sampling policy) and random advantages."""
    from safemeta.rollout.batch import Batch, episode_means

    n, steps, e = 2, 6, 2
    ends = {(0, 0): {2: "trunc", 5: "trunc"}, (0, 1): {1: "term", 4: "trunc"},  # (0, 1): step 5 unfinished
            (1, 0): {5: "trunc"}, (1, 1): {0: "term", 3: "term"}}  # (1, 1): steps 4-5 unfinished
    term, trunc = torch.zeros(n, steps, e, dtype=torch.bool), torch.zeros(n, steps, e, dtype=torch.bool)
    for (i, j), marks in ends.items():
        for step, kind in marks.items():
            (term if kind == "term" else trunc)[i, step, j] = True
    cost = torch.randint(0, 4, (n, steps, e), generator=gen).double()
    rew = torch.randn(n, steps, e, generator=gen, dtype=torch.float64)
    obs = torch.randn(n, steps, e, t.obs_dim, generator=gen, dtype=torch.float64)
    act = torch.randn(n, steps, e, t.act_dim, generator=gen, dtype=torch.float64)
    adv = [torch.randn(n, steps, e, generator=gen, dtype=torch.float64) for _ in range(4)]
    batch = Batch(obs, act, torch.zeros(n, steps, e, dtype=torch.float64), rew, cost, term, trunc, obs,
                  episode_means(rew, term, trunc), episode_means(cost, term, trunc),
                  (term | trunc).sum((1, 2)).double(), *adv)
    theta = {k: v.detach().double() for k, v in t.meta.theta.items()}
    with torch.no_grad():
        batch = replace(batch, logp=t.inner.log_prob(stack(theta, n), batch))
    return batch, theta, ends


def _episodes_by_hand(ends, steps=6):
    """{(task, env): [[t of each step of a finished episode], ...]}"""
    out = {}
    for key, marks in ends.items():
        out[key], start = [], 0
        for step in sorted(marks):
            out[key].append(list(range(start, step + 1)))
            start = step + 1
    return out


def test_discounted_constraint_value_matches_a_hand_computation(make_config):
    """Issue 18, item 6: ``constraint: discounted`` puts J_C = mean over finished episodes of sum_t gamma_c^t c_t
    (t from each episode's start) into b = J_C - d, in the batch, in the inner CPO step and in the meta constraint
    G; its cost advantages are gamma_c^t A_C centered, times steps per episode; at gamma_c = 1 it is the episode
    constraint."""
    from safemeta.algorithms.inner.base import episode_cost_advantages
    from safemeta.algorithms.inner.cpo import CPO, CPOConfig, discounted_cost_advantages
    from safemeta.rollout.batch import episode_means

    t = _trainer(make_config)
    batch, theta, ends = _small_batch(t, torch.Generator().manual_seed(0))
    episodes = _episodes_by_hand(ends)
    t_in_episode = torch.zeros(2, 6, 2, dtype=torch.long)
    for (i, j), marks in ends.items():
        start = 0
        for step in range(6):
            t_in_episode[i, step, j] = step - start
            if step in marks:
                start = step + 1
    assert torch.equal(batch.step_in_episode, t_in_episode)
    bonus = torch.rand(2, 6, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    shaped = replace(batch, cost_bonus=bonus, ep_cost_bonus=episode_means(bonus, batch.terminated, batch.truncated))
    def by_hand(c):  # per task: the mean over its finished episodes of sum_k gamma^k c_{start + k}
        return torch.tensor([np.mean([sum(GAMMA_C**k * float(c[i, s, j]) for k, s in enumerate(ep))
                                      for (task, j), eps in episodes.items() if task == i for ep in eps])
                             for i in range(2)], dtype=torch.float64)

    for b, c in ((batch, batch.cost), (shaped, batch.cost + bonus)):
        torch.testing.assert_close(b.ep_discounted_constraint_cost(GAMMA_C), by_hand(c))
        torch.testing.assert_close(b.ep_discounted_constraint_cost(1.0), b.ep_constraint_cost)
    hand = by_hand(batch.cost)
    assert not torch.allclose(hand, batch.ep_cost)  # the discount matters on this batch

    # cost advantages: gamma^t A_C centered per task, times env steps per finished episode (here 12 / 4, 12 / 3)
    weighted = batch.adv_c * GAMMA_C ** t_in_episode.double()
    steps_per_episode = torch.tensor([3.0, 4.0], dtype=torch.float64).reshape(2, 1, 1)
    expected = (weighted - weighted.mean((1, 2), keepdim=True)) * steps_per_episode
    torch.testing.assert_close(discounted_cost_advantages(batch, GAMMA_C), expected)
    torch.testing.assert_close(discounted_cost_advantages(batch, 1.0), episode_cost_advantages(batch))

    # b = J_C - d in the inner CPO step and G in the meta constraint, at the sampling policy
    d = torch.tensor([0.5, 2.0], dtype=torch.float64)
    state = {"cost_limit": d}
    _, g = post_adaptation_objectives(t.inner, stack(theta, 2), batch, state, "discounted", GAMMA_C)
    torch.testing.assert_close(g, hand - d)
    _, g = post_adaptation_objectives(t.inner, stack(theta, 2), batch, state)
    torch.testing.assert_close(g, batch.ep_cost - d)
    cpo = CPO(CPOConfig(metric="euclidean", constraint="discounted", cost_gamma=GAMMA_C), t.actor)
    _, _, info = cpo.step(stack(theta, 2), batch, state)
    torch.testing.assert_close(info["constraint_value"], hand - d)


def test_discounted_constraint_holds_at_both_levels(make_config):
    """Meta-CPO with ``inner_cfg.cpo.constraint: discounted``: the local steps' b and the meta G are the rollouts'
    discounted cost at critic.cost_gamma minus d; a cpo.cost_gamma other than critic.cost_gamma is refused."""
    from safemeta.errors import UserError

    # a hazard that covers the start: costs in most episodes, rising and falling within them
    common = dict(algo="meta_cpo", policy={"hidden_sizes": [8]}, critic={"cost_gamma": GAMMA_C},
                  trainer={"tasks_per_iter": M, "adapt_steps": 1, "envs_per_task": 4},
                  env_cfg={"tiny-nav": {"hazard_radius": 0.55, "cost_limit": 0.5}})
    with pytest.raises(UserError, match="cost_gamma"):
        MetaTrainer(make_config(**common, inner_cfg={"cpo": {"constraint": "discounted"}}))
    t = MetaTrainer(make_config(**common, inner_cfg={"cpo": {"constraint": "discounted", "cost_gamma": GAMMA_C}}))
    captured = {}
    original = t.outer.update
    t.outer.update = lambda result, tasks: (captured.update(result=result), original(result, tasks))[1]
    m = t.train_iteration()
    result = captured["result"]
    first, last = result.batches[0], result.batches[-1]
    assert float(first.ep_cost.mean()) > 0
    assert not torch.allclose(first.ep_discounted_constraint_cost(GAMMA_C), first.ep_cost)
    torch.testing.assert_close(result.infos[0]["constraint_value"], first.ep_discounted_constraint_cost(GAMMA_C) - 0.5)
    assert m["meta/G"] == pytest.approx(float(last.ep_discounted_constraint_cost(GAMMA_C).mean()) - 0.5, abs=1e-5)
