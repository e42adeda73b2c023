"""Meta-SRL's tabular pieces (issue 8): the distance term's gradient against finite differences, the
FTL initialization and step size as exact minimizers of the summed bounds, softmax CRPO against the LP
optimum and its switching rule, and the online protocol where Meta-SRL must beat random starts."""
import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar

from safemeta.algorithms.meta_srl.online_dualdice import (distance_grad, distance_term, estimated_visitation,
                                                          ftl_step_size, local_norm, step_size_bound)
from safemeta.algorithms.meta_srl.tabular_crpo import crpo
from safemeta.cli import main
from safemeta.online import build_online_config, run_online
from safemeta.tabular import evaluate, solve_constrained, state_occupancy


@pytest.fixture(scope="module")
def family():
    return build_online_config({"env_cfg": {"similarity": 0.9}})[2]


def test_distance_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    d_hat = rng.dirichlet(np.ones(6))
    pi_hat = rng.dirichlet(np.ones(4), size=6)
    phi = rng.standard_normal((6, 4))
    grad = distance_grad(d_hat, pi_hat, phi)
    h = 1e-6
    fd = np.zeros_like(phi)
    for idx in np.ndindex(phi.shape):
        e = np.zeros_like(phi)
        e[idx] = h
        fd[idx] = (distance_term(d_hat, pi_hat, phi + e) - distance_term(d_hat, pi_hat, phi - e)) / (2 * h)
    np.testing.assert_allclose(grad, fd, atol=1e-7)
    assert distance_term(d_hat, pi_hat, np.log(pi_hat)) == pytest.approx(0.0, abs=1e-12)


def test_alpha_closed_form_minimizes_the_summed_bound():
    rng = np.random.default_rng(1)
    dist, eps, g2 = rng.uniform(0.01, 2, 8), rng.uniform(0, 0.3, 8), rng.uniform(10, 1e4, 8)
    for weights in (np.ones(8), 0.7 ** np.arange(7, -1, -1)):
        alpha = ftl_step_size(dist, eps, g2, weights)
        total = lambda a, w=weights: float((w * step_size_bound(a, dist, eps, g2)).sum())  # noqa: E731
        best = minimize_scalar(lambda la: total(np.exp(la)), bounds=(-20, 5), method="bounded",
                               options={"xatol": 1e-10})
        assert alpha == pytest.approx(np.exp(best.x), rel=1e-4)
        assert total(alpha) <= min(total(alpha * 1.01), total(alpha / 1.01))


def test_ftl_initialization_minimizes_the_summed_distance(family):
    """Meta-SRL's phi after two tasks (FTL) is the minimizer of D_1(phi) + D_2(phi): no perturbation lowers it."""
    cfg, lcfg, fam = build_online_config({"tasks": 2, "steps": 3, "seed": 3, "learner_cfg": {"phi_update": "ftl"}})
    from safemeta import registry
    from safemeta.algorithms.meta_srl.base import OnlineContext

    rng = np.random.default_rng(0)
    learner = registry.online.get("online_dualdice")(lcfg, OnlineContext(25, 4, 0.99, 3, 2e-3, rng))
    terms = []
    for task in fam.sample(2, "train", rng):
        cmdp = fam.cmdp(task)
        phi, alpha = learner.propose()
        run = crpo(cmdp, phi, alpha, 3, fam.cost_limit, 0.0, 20, fam.horizon, rng)
        learner.observe(run, phi, alpha)
        terms.append((estimated_visitation(run, 25, 4, 0.99)[0], run.policy))
    total = lambda p: sum(distance_term(d, pi, p) for d, pi in terms)  # noqa: E731
    phi = learner.phi
    assert np.abs(sum(distance_grad(d, pi, phi) for d, pi in terms)).max() < 1e-8
    for _ in range(20):
        assert total(phi + 0.05 * rng.standard_normal(phi.shape)) > total(phi)


def test_crpo_reaches_the_lp_optimum_and_switches_on_the_cost(family):
    task = family.sample(1, "train", np.random.default_rng(5))[0]
    cmdp, d = family.cmdp(task), family.cost_limit
    opt = solve_constrained(cmdp, d)
    run = crpo(cmdp, np.zeros((25, 4)), 0.01, 300, d, 0.0, 1, 1, np.random.default_rng(0))
    j_r, j_c = evaluate(cmdp, run.policy)
    assert opt.J_r - j_r < 0.02 * opt.J_r and j_c < d + 0.02
    # the rule: a cost step exactly when J_c(pi_k) > d + eta, with the iterates' exact costs
    for tol in (0.0, 0.05):
        run = crpo(cmdp, np.zeros((25, 4)), 0.01, 40, d, tol, 1, 1, np.random.default_rng(0))
        assert run.cost_steps == sum(jc > d + tol for _, jc in run.returns[:-1])
    assert 0 < run.cost_steps < 40
    # each step moves the logits by +-alpha Q / (1 - gamma): the local norm the learner reads off them
    assert local_norm(run, state_occupancy(cmdp, run.policy), 0.01) > 0


def test_dualdice_visitation_of_the_final_policy_is_close_to_the_exact_one(family):
    cmdp = family.cmdp(family.sample(1, "train", np.random.default_rng(7))[0])
    run = crpo(cmdp, np.zeros((25, 4)), 3e-3, 5, family.cost_limit, 0.0, 200, family.horizon,
               np.random.default_rng(0))
    d_hat, mean_w = estimated_visitation(run, 25, 4, cmdp.gamma)
    assert 0.5 * np.abs(d_hat - state_occupancy(cmdp, run.policy)).sum() < 0.05
    assert mean_w == pytest.approx(1.0, abs=0.05)


def test_meta_srl_beats_random_starts_on_similar_tasks():
    """On a high-similarity sequence, learning phi and alpha gives a lower TAOG and TACV than starting
    each task from a random policy (and than the fixed uniform start's first task)."""
    out = {}
    for learner in ("online_dualdice", "random"):
        cfg, lcfg, fam = build_online_config({"learner": learner, "tasks": 12, "steps": 5, "seed": 0,
                                              "env_cfg": {"similarity": 0.9}})
        out[learner] = run_online(cfg, lcfg, fam)
    ours, rand = out["online_dualdice"], out["random"]
    assert ours[-1]["taog"] < 0.6 * rand[-1]["taog"] and ours[-1]["tacv"] < rand[-1]["tacv"]
    assert np.mean([r["gap"] for r in ours[-4:]]) < ours[0]["gap"]  # it improves along the sequence
    assert all(r["learner/visitation_tv"] < 0.1 for r in ours)


def test_online_grid_errors_are_clean(tmp_path, capsys):
    bad = tmp_path / "g.yaml"
    bad.write_text("learners: [online_dualdice, nope]\nsettings: {a: {}}\nseeds: [0]\n")
    assert main(["online", str(bad)]) == 2
    assert "Unknown online meta-learner 'nope'" in capsys.readouterr().err
    bad.write_text("learners: [online_dualdice]\nsettings: {a: {env_cfg: {similarity: 2}}}\nseeds: [0]\n")
    assert main(["online", str(bad)]) == 2
    assert "similarity" in capsys.readouterr().err
    bad.write_text("learners: [online_dualdice]\nsettings: {a: {env: point-circle}}\nseeds: [0]\n")
    assert main(["online", str(bad)]) == 2  # a continuous family has its own learners
    assert "'online_dualdice' is not one of meta_srl, random, pretrained, fal, averaging" in capsys.readouterr().err


def test_online_grid_writes_a_board_and_skips_finished_cells(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text(f"name: tiny\nlearners: [online_dualdice, fal]\nsettings: {{hi: {{env_cfg: {{similarity: 0.9}}}}}}\n"
                    f"seeds: [0, 1]\nbase: {{tasks: 3, steps: 2}}\nruns: {tmp_path / 'runs'}\nout: {tmp_path / 'lb'}\n")
    assert main(["online", str(grid), "--no-progress"]) == 0
    board = (tmp_path / "lb" / "tiny.md").read_text()
    assert "| online_dualdice |" in board and "| fal |" in board and (tmp_path / "lb" / "tiny.png").exists()
    csv = tmp_path / "runs" / "tiny" / "hi" / "fal-s1.csv"
    stamp = csv.stat().st_mtime_ns
    assert main(["online", str(grid), "--no-progress"]) == 0
    assert csv.stat().st_mtime_ns == stamp  # finished cells are not rerun or overwritten


# -- the neural path through the trainer (preset meta_srl) ----------------------------------------------

def test_discounted_visitation_restarts_at_episode_boundaries():
    import torch

    from safemeta.algorithms.outer.online_dualdice import discounted_visitation
    from safemeta.batch import Batch

    z = torch.zeros(1, 4, 1)
    done = torch.tensor([False, True, False, False]).reshape(1, 4, 1)
    batch = Batch(obs=torch.zeros(1, 4, 1, 2), act=torch.zeros(1, 4, 1, 2), logp=z, rew=z, cost=z,
                  terminated=torch.zeros_like(done), truncated=done, next_obs=torch.zeros(1, 4, 1, 2),
                  ep_return=torch.zeros(1), ep_cost=torch.zeros(1), ep_count=torch.ones(1))
    w = discounted_visitation(batch, 0.5).flatten()
    expected = torch.tensor([1, 0.5, 1, 0.5]) / 3.0
    torch.testing.assert_close(w, expected)


@pytest.mark.parametrize("visitation", ["dualdice", "on_policy"])
def test_meta_srl_preset_learns_alpha_and_distills_toward_the_adapted_policy(make_config, visitation):
    from safemeta.trainer import MetaTrainer

    t = MetaTrainer(make_config(algo="meta_srl", trainer={"adapt_steps": 3, "tasks_per_iter": 1},
                                outer_cfg={"online_dualdice": {"visitation": visitation}}))
    assert t.cfg.inner == "crpo"
    alpha0 = t.outer.alpha
    for _ in range(3):
        row = t.train_iteration()
        assert row["inner/step_size"] == pytest.approx(row["meta_srl/alpha"])  # CRPO ran with the learned alpha
        assert row["meta_srl/distance_after"] < 0.5 * row["meta_srl/distance"]  # the OGD step moved phi to pi_hat
        assert row["meta_srl/distance"] > 0 and row["meta_srl/G"] > 0
        assert row["meta_srl/mean_weight"] == pytest.approx(1.0, abs=0.05)  # E_D[w] of the DualDICE solve
    assert t.outer.alpha != alpha0 and t.outer.cfg.alpha_min <= t.outer.alpha <= t.outer.cfg.alpha_max
    state = t.state_dict()
    fresh = MetaTrainer(make_config(algo="meta_srl", trainer={"adapt_steps": 3, "tasks_per_iter": 1}))
    fresh.load_state_dict(state)
    assert fresh.outer.alpha == t.outer.alpha and fresh.outer.history == t.outer.history


def test_meta_srl_refuses_an_inner_solver_without_step_sizes(make_config):
    from safemeta.errors import UserError
    from safemeta.trainer import MetaTrainer

    with pytest.raises(UserError, match="step size steps.*Inner solvers that do: crpo"):
        MetaTrainer(make_config(algo="meta_srl", inner="trpolag"))


def test_continuous_online_protocol_runs_every_learner_and_reuses_its_references(tmp_path):
    from safemeta.online_continuous import run_online_continuous

    cache = tmp_path / "reference.json"
    results = {}
    for learner in ("meta_srl", "fal", "random", "pretrained"):
        cfg, _, _ = build_online_config({"env": "tiny-nav", "learner": learner, "tasks": 3, "steps": 2,
                                         "reference_steps": 4, "pretrain_iters": 2, "envs_per_task": 4})
        results[learner] = run_online_continuous(cfg, cache)
        stamp = cache.stat().st_mtime_ns
    assert cache.stat().st_mtime_ns == stamp  # computed once, read back by the later learners
    refs = {tuple(r["J_r_ref"] for r in rows) for rows in results.values()}
    assert len(refs) == 1  # every learner is measured against the same references
    for rows in results.values():
        assert [r["t"] for r in rows] == [1, 2, 3]
        assert all(np.isfinite(r["gap"]) and r["violation"] >= 0 for r in rows)
        assert rows[-1]["taog"] == pytest.approx(np.mean([r["gap"] for r in rows]))
    assert "learner/alpha_next" in results["meta_srl"][-1]


def _tiny_actor():
    from safemeta.policy import GaussianActor, batched, init_params

    torch.manual_seed(0)
    actor = GaussianActor(3, 2, (16,), "tanh", 0.0)
    return batched(actor), init_params(actor)


def test_averaging_distils_toward_a_single_past_policy():
    from safemeta.algorithms.outer.online_dualdice import NeuralOnlineDualDICEConfig
    from safemeta.online_continuous import distill_mixture, policy_target
    from safemeta.params import stack

    actor_fn, theta = _tiny_actor()
    gen, budget = torch.Generator().manual_seed(0), NeuralOnlineDualDICEConfig()
    pi_hat = {k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in theta.items()}
    target = policy_target(actor_fn, stack(pi_hat, 1), torch.randn(2, 300, 3, generator=gen), 256, gen)
    assert target.states.shape == (256, 3)  # a subsample of the rollout's states is kept
    _, before, after = distill_mixture(actor_fn, theta, [target], budget.distill_iters, budget.lr_phi)
    assert after < 0.1 * before  # one past task: theta_2 is (nearly) pi_hat_1


def test_averaging_finds_the_mixture_of_the_past_policies_not_their_parameter_mean():
    """pi_hat_1, pi_hat_2 share their mean and have log std -1, +1: the Gaussian closest in KL to their mixture
    (the M-projection) has variance (e^-2 + e^2) / 2, whereas fal's parameter mean (and theta_1) has log std 0."""
    import math

    from safemeta.algorithms.outer.online_dualdice import NeuralOnlineDualDICEConfig
    from safemeta.online_continuous import distill_mixture, mixture_distance, policy_target
    from safemeta.params import stack

    actor_fn, theta = _tiny_actor()
    gen, budget = torch.Generator().manual_seed(0), NeuralOnlineDualDICEConfig()
    past = [dict(theta, log_std=torch.full((2,), s)) for s in (-1.0, 1.0)]
    targets = [policy_target(actor_fn, stack(p, 1), torch.randn(200, 3, generator=gen), 256, gen) for p in past]
    fal = {k: (past[0][k] + past[1][k]) / 2 for k in theta}
    distance = lambda p: float(mixture_distance(actor_fn, p, targets))  # noqa: E731
    ours, _, after = distill_mixture(actor_fn, theta, targets, budget.distill_iters, budget.lr_phi)
    assert after == pytest.approx(distance(ours))
    assert after < distance(fal) - 0.2 and after < distance(theta) - 0.2
    converged, _, best = distill_mixture(actor_fn, theta, targets, 400, 0.05)
    assert best < min(distance(p) for p in past + [fal, ours])
    expected = 0.5 * math.log((math.exp(-2) + math.exp(2)) / 2)
    torch.testing.assert_close(converged["log_std"], torch.full((2,), expected), atol=0.02, rtol=0)
    torch.testing.assert_close(converged["mean.2.weight"], theta["mean.2.weight"])  # the means already agree


@pytest.mark.parametrize("learner", ["meta_srl", "random", "pretrained", "fal", "averaging"])
def test_every_continuous_learner_carries_its_critics_initialization(tmp_path, monkeypatch, learner):
    """Task 2's critics start from the learner's carried initialization as fitted on task 1's first batch
    (`fit_meta_critics`), not from the shared init; task 1's start from the shared init (pretrained: its own)."""
    import safemeta.model
    import safemeta.online_continuous as oc
    from safemeta.adaptation import Adapter

    shared, starts, fits, results = {}, [], [], []
    make, fit, adapt, critics = oc.make_learner, safemeta.model.fit_meta_critics, Adapter.adapt, oc.Learner.critics

    def make_learner(cfg, trainer):
        shared.update({k: v.clone() for k, v in trainer.meta.critic_reward.items()})
        return make(cfg, trainer)

    def start(self):
        out = critics(self)
        starts.append(({k: v.clone() for k, v in out.reward.items()}, {k: v.clone() for k, v in out.cost.items()}))
        return out

    def fitted(meta, crit, batch):
        out = fit(meta, crit, batch)
        fits.append((batch, dict(meta.critic_reward), dict(meta.critic_cost)))
        return out

    def recorded(self, init, *args, **kw):
        results.append(adapt(self, init, *args, **kw))
        return results[-1]

    monkeypatch.setattr(oc, "make_learner", make_learner)
    monkeypatch.setattr(oc.Learner, "critics", start)
    monkeypatch.setattr(safemeta.model, "fit_meta_critics", fitted)
    monkeypatch.setattr(Adapter, "adapt", recorded)
    cfg, _, _ = build_online_config({"env": "tiny-nav", "learner": learner, "tasks": 2, "steps": 1,
                                     "reference_steps": 2, "pretrain_iters": 1, "envs_per_task": 2})
    rows = oc.run_online_continuous(cfg, tmp_path / "reference.json")
    assert len(starts) == 2 and len(fits) == 2
    first = results[-2]  # the last two adaptations are the sequence's tasks
    assert fits[0][0] is first.batches[0]  # fitted on task 1's first batch
    for k in shared:
        assert torch.equal(starts[1][0][k][0], fits[0][1][k])
        assert torch.equal(starts[1][1][k][0], fits[0][2][k])
    assert any(not torch.equal(starts[1][0][k][0], shared[k]) for k in shared)
    first_is_shared = all(torch.equal(starts[0][0][k][0], shared[k]) for k in shared)
    assert first_is_shared == (learner != "pretrained")
    assert all(np.isfinite(v) for r in rows for v in r.values())
    if learner == "averaging":
        assert rows[0]["learner/distance_after"] < rows[0]["learner/distance"]
    if learner == "random":  # its policy is fresh per task
        assert not torch.equal(results[-2].params[0]["mean.0.weight"], results[-1].params[0]["mean.0.weight"])


def test_an_unknown_continuous_learner_lists_the_valid_ones():
    from safemeta.errors import UserError
    from safemeta.online_continuous import CONTINUOUS_LEARNERS, ContinuousOnlineConfig, make_learner

    assert "averaging" in CONTINUOUS_LEARNERS
    with pytest.raises(UserError, match="'nope' is not one of meta_srl, random, pretrained, fal, averaging"):
        build_online_config({"env": "tiny-nav", "learner": "nope"})
    with pytest.raises(UserError, match="valid: meta_srl, random, pretrained, fal, averaging"):
        make_learner(ContinuousOnlineConfig(env="tiny-nav", learner="nope"), None)
