"""Exact tabular CMDP tools (`safemeta.rollout.tabular`) and the ``tabular-gridworld`` family.

The exact quantities are checked against independent computations: Monte-Carlo rollouts of the
batched env, iterative (Bellman) policy evaluation, value iteration, and brute force over a grid of
stochastic policies.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from scipy import stats

from safemeta.rollout import tabular as tb
from safemeta.envs.tabular_gridworld import (DOWN, LEFT, RIGHT, UP, TabularGridworld, TabularGridworldConfig,
                                             TabularGridworldEnv)


# ------------------------------------------------------------------------------------------ helpers
def random_cmdp(seed: int, S: int = 6, A: int = 3, gamma: float = 0.9) -> tb.TabularCMDP:
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.full(S, 0.5), size=(S, A))
    return tb.TabularCMDP(P, rng.uniform(size=(S, A)), rng.uniform(size=(S, A)), rng.dirichlet(np.ones(S)), gamma)


def random_policy(seed: int, S: int, A: int) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(A), size=S)


def bellman_evaluation(m: tb.TabularCMDP, pi: np.ndarray, x: np.ndarray, iters: int = 2000) -> np.ndarray:
    """V <- sum_a pi(a|s) [x(s,a) + gamma sum_s' P(s'|s,a) V(s')], iterated to convergence."""
    V = np.zeros(m.n_states)
    for _ in range(iters):
        V = (pi * (x + m.gamma * m.P @ V)).sum(-1)
    return V


def value_iteration(m: tb.TabularCMDP, x: np.ndarray, best=np.max, iters: int = 3000) -> np.ndarray:
    V = np.zeros(m.n_states)
    for _ in range(iters):
        V = best(x + m.gamma * m.P @ V, axis=-1)
    return V


def family(**kw) -> TabularGridworld:
    return TabularGridworld(TabularGridworldConfig(**kw))


# ------------------------------------------------------------------------------------ TabularCMDP
def test_cmdp_validation_rejects_bad_tables():
    m = random_cmdp(0)
    bad_P = m.P.copy()
    bad_P[2, 1, 0] += 0.1
    with pytest.raises(ValueError, match=r"P\[2, 1, :\] sums to"):
        tb.TabularCMDP(bad_P, m.r, m.c, m.mu0, m.gamma)
    with pytest.raises(ValueError, match="gamma"):
        tb.TabularCMDP(m.P, m.r, m.c, m.mu0, 1.0)
    with pytest.raises(ValueError, match="mu0"):
        tb.TabularCMDP(m.P, m.r, m.c, m.mu0 * 2, m.gamma)
    with pytest.raises(ValueError, match="r must have shape"):
        tb.TabularCMDP(m.P, m.r[:, :2], m.c, m.mu0, m.gamma)
    with pytest.raises(ValueError, match="pi must"):
        tb.occupancy(m, np.ones((m.n_states, m.n_actions)))


# -------------------------------------------------------------------------------------- occupancy
def test_occupancy_is_a_distribution_satisfying_the_flow_equation():
    for seed in range(5):
        m = random_cmdp(seed)
        pi = random_policy(seed, m.n_states, m.n_actions)
        d = tb.occupancy(m, pi)
        assert d.shape == (m.n_states, m.n_actions)
        assert d.min() >= 0.0
        assert d.sum() == pytest.approx(1.0, abs=1e-12)
        # sum_a d(s', a) = (1 - gamma) mu0(s') + gamma sum_{s,a} P(s'|s,a) d(s,a)
        inflow = np.einsum("sa,sat->t", d, m.P)
        np.testing.assert_allclose(d.sum(-1), (1 - m.gamma) * m.mu0 + m.gamma * inflow, atol=1e-12)
        np.testing.assert_allclose(d / d.sum(-1, keepdims=True), pi, atol=1e-10)


def test_occupancy_and_returns_match_monte_carlo_rollouts_of_the_env():
    gamma, horizon, E = 0.8, 60, 20_000  # gamma^horizon = 1.5e-6: the truncated sums are the infinite ones
    fam = family(gamma=gamma, horizon=horizon, similarity=0.0)
    tasks = fam.sample(2, "test", np.random.default_rng(3))  # slip in [0.2, 0.35]: the slip path is exercised
    cmdps = [fam.cmdp(t) for t in tasks]
    S = fam.n_states
    pis = np.stack([random_policy(10 + i, S, 4) for i in range(2)])
    env = fam.make(tasks, E, seed=0)
    pi_env = torch.as_tensor(pis, dtype=torch.float64).repeat_interleave(E, 0)   # [B, S, A], task-major
    rows = torch.arange(2 * E)
    gen = torch.Generator().manual_seed(1)
    counts = torch.zeros(2 * E, S, 4, dtype=torch.float64)
    ret_r = torch.zeros(2 * E, dtype=torch.float64)
    ret_c = torch.zeros(2 * E, dtype=torch.float64)
    obs = env.reset(seed=0)
    for t in range(horizon):
        s = obs.argmax(-1)
        a = torch.multinomial(pi_env[rows, s], 1, generator=gen).squeeze(-1)
        w = (1 - gamma) * gamma**t
        counts[rows, s, a] += w
        obs, rew, cost, term, trunc, info = env.step(a)
        ret_r += gamma**t * rew.double()
        ret_c += gamma**t * cost.double()
        assert not bool(term.any())
        assert bool(trunc.all()) == (t == horizon - 1)
    d_mc = counts.view(2, E, S, 4).mean(1).numpy()
    for k in range(2):
        d = tb.occupancy(cmdps[k], pis[k])
        # per-episode estimates lie in [0, 1], so their variance is at most d: 5 standard errors (+ tail)
        tol = 5 * np.sqrt(np.maximum(d, 1e-4) / E) + 2 * gamma**horizon
        assert np.all(np.abs(d_mc[k] - d) <= tol), np.abs(d_mc[k] - d).max()
        j_r, j_c = tb.evaluate(cmdps[k], pis[k])
        r_k, c_k = ret_r.view(2, E)[k], ret_c.view(2, E)[k]
        assert abs(float(r_k.mean()) - j_r) <= 5 * float(r_k.std()) / np.sqrt(E) + 1e-3
        assert abs(float(c_k.mean()) - j_c) <= 5 * float(c_k.std()) / np.sqrt(E) + 1e-3


# ------------------------------------------------------------------------------------- evaluation
def test_evaluate_matches_iterative_policy_evaluation():
    for seed in range(3):
        m = random_cmdp(seed, S=7, A=3, gamma=0.9)
        pi = random_policy(seed, 7, 3)
        V_r, V_c = bellman_evaluation(m, pi, m.r), bellman_evaluation(m, pi, m.c)
        j_r, j_c = tb.evaluate(m, pi)
        assert j_r == pytest.approx(m.mu0 @ V_r, abs=1e-9)
        assert j_c == pytest.approx(m.mu0 @ V_c, abs=1e-9)
        np.testing.assert_allclose(tb.state_values(m, pi, "c"), V_c, atol=1e-9)
        np.testing.assert_allclose(tb.q_values(m, pi, "r"), m.r + m.gamma * m.P @ V_r, atol=1e-9)


def test_occupancy_ratio_reweights_data_to_the_target_policy():
    m = random_cmdp(4)
    pi, beta = random_policy(1, 6, 3), random_policy(2, 6, 3)
    d_beta = tb.occupancy(m, beta)
    w = tb.occupancy_ratio(m, pi, d_beta)
    # E_{d_beta}[w x] = E_{d_pi}[x] for any x: here J_r(pi) (1 - gamma)
    assert (d_beta * w * m.r).sum() / (1 - m.gamma) == pytest.approx(tb.evaluate(m, pi)[0], rel=1e-10)


# --------------------------------------------------------------------------- the constrained LP
def _grid_returns(m: tb.TabularCMDP, step: float = 0.01):
    """Exact (J_r, J_c) of every policy pi(a0|s) on a grid, for a 2-state 2-action CMDP (batched solve)."""
    p = np.linspace(0.0, 1.0, int(round(1 / step)) + 1)
    a, b = np.meshgrid(p, p, indexing="ij")
    pi = np.stack([np.stack([a, 1 - a], -1), np.stack([b, 1 - b], -1)], -2).reshape(-1, 2, 2)
    P_pi = np.einsum("ksa,sat->kst", pi, m.P)
    out = []
    for x in (m.r, m.c):
        V = np.linalg.solve(np.eye(2) - m.gamma * P_pi, (pi * x).sum(-1)[..., None])[..., 0]
        out.append(V @ m.mu0)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_lp_optimum_is_feasible_and_matches_brute_force_on_a_tiny_cmdp(seed):
    rng = np.random.default_rng(seed)
    r = rng.uniform(size=(2, 2))
    m = tb.TabularCMDP(rng.dirichlet(np.ones(2), size=(2, 2)), r, r + 0.3 * rng.uniform(size=(2, 2)),
                       rng.dirichlet(np.ones(2)), 0.9)  # cost grows with reward: a real trade-off
    J_r, J_c = _grid_returns(m)
    limit = 0.5 * (J_c.min() + J_c[J_r.argmax()])
    best = J_r[J_c <= limit].max()
    assert J_r.max() - best > 0.3  # the constraint binds
    sol = tb.solve_constrained(m, limit)
    assert sol.J_c <= limit + 1e-6
    assert sol.J_r >= best - 1e-9           # the LP optimizes over all policies, the grid over some
    assert sol.J_r - best <= 0.03           # ... and the grid (step 0.01) comes close to it
    assert (sol.J_r, sol.J_c) == pytest.approx(tb.evaluate(m, sol.pi), abs=1e-12)
    assert tb.optimality_gap(m, sol.pi, limit, solution=sol) == pytest.approx(0.0, abs=1e-12)
    assert tb.constraint_violation(m, sol.pi, limit) <= 1e-6


@pytest.mark.parametrize("make", [lambda: random_cmdp(7, S=8, A=3, gamma=0.9),
                                  lambda: family(similarity=0.0).cmdp(family(similarity=0.0).sample(
                                      1, "test", np.random.default_rng(0))[0])])
def test_inactive_constraint_gives_the_value_iteration_optimum(make):
    m = make()
    V_star = value_iteration(m, m.r)
    sol = tb.solve_constrained(m, cost_limit=1e6)
    assert sol.J_r == pytest.approx(m.mu0 @ V_star, abs=1e-7)
    # the unconstrained optimum, held to a tighter (feasible) limit, violates it by its excess cost
    limit = 0.5 * (tb.minimal_cost(m)[0] + sol.J_c)
    assert tb.solve_constrained(m, limit).J_r < sol.J_r - 1e-3
    assert tb.constraint_violation(m, sol.pi, limit) == pytest.approx(sol.J_c - limit)
    assert tb.optimality_gap(m, sol.pi, limit) < 0  # it beats the constrained optimum by cheating


def test_infeasible_limit_raises_with_the_minimal_cost():
    m = random_cmdp(5)
    m = tb.TabularCMDP(m.P, m.r, 0.5 + m.c, m.mu0, m.gamma)  # every step costs >= 0.5
    j_min = float(m.mu0 @ value_iteration(m, m.c, best=np.min))
    with pytest.raises(ValueError, match="infeasible") as err:
        tb.solve_constrained(m, 0.9 * j_min)
    reported = float(re.search(r"minimal achievable discounted cost J_c is ([-+0-9.eE]+)", str(err.value)).group(1))
    assert reported == pytest.approx(j_min, abs=1e-6)
    sol = tb.solve_constrained(m, j_min + 1e-6)  # just feasible
    assert sol.J_c <= j_min + 2e-6


# ----------------------------------------------------------------------------- the grid family
def test_tables_follow_the_documented_dynamics():
    fam = family(size=4, n_costly=3, min_goal_dist=3)
    params = {"slip": 0.2, "goal": 15, "costly": [5, 6, 10]}
    m = fam.cmdp(params)
    assert m.P.shape == (16, 4, 16) and m.gamma == fam.cfg.gamma
    assert m.P[0, RIGHT, 1] == pytest.approx(0.8) and m.P[0, RIGHT, 4] == pytest.approx(0.1)
    assert m.P[0, RIGHT, 0] == pytest.approx(0.1)          # the slip upward hits the wall
    assert m.P[0, UP, 0] == pytest.approx(0.9) and m.P[0, UP, 1] == pytest.approx(0.1)
    assert m.P[5, DOWN, 9] == pytest.approx(0.8) and m.P[5, LEFT, 4] == pytest.approx(0.8)
    assert np.all(m.P[15, :, 15] == 1.0)                    # absorbing goal
    assert np.all(m.r[15] == 1.0) and m.r.sum() == 4.0
    assert np.all(m.c[[5, 6, 10]] == 1.0) and m.c.sum() == 12.0
    assert m.mu0[0] == 1.0


def test_similarity_one_gives_identical_tasks_and_zero_different_ones():
    for split in ("train", "test"):
        same = family(similarity=1.0)
        tables = [same.tables(t) for t in same.sample(6, split, np.random.default_rng(0))]
        for tab in tables[1:]:
            for x, y in zip(tables[0], tab):
                np.testing.assert_array_equal(x, y)
        diff = family(similarity=0.0)
        tasks = diff.sample(6, split, np.random.default_rng(0))
        Ps = [diff.cmdp(t).P for t in tasks]
        assert all(not np.array_equal(Ps[i], Ps[j]) for i in range(6) for j in range(i))
        assert len({(t.params["goal"], tuple(t.params["costly"])) for t in tasks}) > 1


def test_similarity_controls_the_distance_to_the_base_task():
    def overlap(sim):
        fam = family(similarity=sim)
        tasks = fam.sample(300, "train", np.random.default_rng(0))
        base = set(fam.base["costly"])
        return np.mean([len(base & set(t.params["costly"])) / len(base) for t in tasks]), \
            np.mean([t.params["goal"] == fam.base["goal"] for t in tasks])
    (c2, g2), (c5, g5), (c8, g8) = overlap(0.2), overlap(0.5), overlap(0.8)
    assert c2 < c5 < c8 and g2 < g5 < g8
    assert g8 == pytest.approx(0.8, abs=0.08)


def test_drawn_params_lie_in_their_split_ranges():
    fam = family(similarity=0.3)
    n = fam.cfg.size
    for split in ("train", "test"):
        lo, hi = getattr(fam.cfg, split).slip
        for t in fam.sample(300, split, np.random.default_rng(1)):
            p = t.params
            assert lo <= p["slip"] <= hi
            assert sum(divmod(p["goal"], n)) >= fam.cfg.min_goal_dist
            assert len(p["costly"]) == len(set(p["costly"])) == fam.cfg.n_costly
            assert p["goal"] not in p["costly"]
            assert all(sum(divmod(s, n)) > 1 for s in p["costly"])  # not the start or its neighbours
            assert p["costly"] == sorted(p["costly"])
    train = fam.sample(200, "train", np.random.default_rng(2))
    test = fam.sample(200, "test", np.random.default_rng(2))
    assert max(t.params["slip"] for t in train) <= 0.2 <= min(t.params["slip"] for t in test)
    # at similarity 0 the slip is exactly uniform on the split's range
    slips = [t.params["slip"] for t in family(similarity=0.0).sample(2000, "train", np.random.default_rng(3))]
    assert stats.kstest(slips, stats.uniform(0.0, 0.2).cdf).pvalue > 1e-3


def test_determinism_under_seeds():
    fam = family()
    assert fam.sample(4, "train", np.random.default_rng(7)) == fam.sample(4, "train", np.random.default_rng(7))
    assert fam.sample(4, "train", np.random.default_rng(7)) != fam.sample(4, "train", np.random.default_rng(8))
    assert family(family_seed=3).base == family(family_seed=3).base != family(family_seed=4).base
    tasks = fam.sample(3, "train", np.random.default_rng(0))

    def rollout(seed):
        env = fam.make(tasks, 5, seed=123)
        acts = torch.Generator().manual_seed(0)
        out = [env.reset(seed=seed)]
        for _ in range(30):
            obs, rew, cost, *_ = env.step(torch.randint(0, 4, (15,), generator=acts))
            out += [obs, rew, cost]
        return out

    a, b, c = rollout(1), rollout(1), rollout(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_env_interface_discrete_actions_truncation_and_final_obs():
    from safemeta.registry import env as env_registry
    assert env_registry.get("tabular-gridworld") is TabularGridworld
    fam = family(horizon=4)
    tasks = fam.sample(3, "train", np.random.default_rng(0))
    env = fam.make(tasks, 2, seed=0)
    assert isinstance(env, TabularGridworldEnv)
    assert (env.n_actions, env.act_dim, env.obs_dim, env.num_envs) == (4, 4, 25, 6)
    obs = env.reset(seed=5)
    assert obs.dtype == torch.float32 and obs.shape == (6, 25)
    assert torch.equal(obs.argmax(-1), torch.zeros(6, dtype=torch.long)) and torch.equal(obs.sum(-1), torch.ones(6))
    idx = torch.tensor([RIGHT, DOWN, UP, LEFT, RIGHT, DOWN])
    scores = torch.randn(6, 4) - 5.0
    scores[:, UP] = 1.5
    scores[torch.arange(6), idx] = 3.0  # clamping to [-1, 1] first would tie with UP and pick it

    def run(act):
        env.reset(seed=5)
        return [env.step(act) for _ in range(4)]

    by_idx, by_score = run(idx), run(scores)
    for (o1, r1, c1, te1, tr1, i1), (o2, r2, c2, te2, tr2, i2) in zip(by_idx, by_score):
        assert torch.equal(o1, o2) and torch.equal(r1, r2) and torch.equal(c1, c2)
    obs, rew, cost, term, trunc, info = by_idx[-1]
    assert bool(trunc.all()) and not bool(term.any())
    assert torch.equal(obs.argmax(-1), torch.zeros(6, dtype=torch.long))   # auto-reset to the start
    assert info["final_obs"].shape == (6, 25) and not torch.equal(info["final_obs"], obs)
    # rewards and costs are the tables' entries of the state each step started from
    env.reset(seed=9)
    prev = env.state.clone()
    _, rew, cost, *_ = env.step(idx)
    r_tab = np.stack([fam.cmdp(t).r for t in tasks]).repeat(2, 0)
    assert torch.equal(rew, torch.as_tensor(r_tab[np.arange(6), prev.numpy(), idx.numpy()], dtype=torch.float32))
    for bad in (torch.tensor([0, 1, 2, 3, 4, 0]), torch.zeros(6, 3), torch.zeros(5, dtype=torch.long)):
        with pytest.raises(ValueError):
            env.step(bad)


def test_bad_family_configs_are_user_errors():
    from safemeta.errors import UserError
    with pytest.raises(UserError, match="min_goal_dist"):
        family(size=3, min_goal_dist=5)
    with pytest.raises(UserError, match="n_costly"):
        family(size=3, n_costly=6, min_goal_dist=2)
