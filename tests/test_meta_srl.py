"""Meta-SRL's tabular pieces (issues 8 and 18): the distance term's gradient against finite differences, the
FTL initialization (on the shrunk simplex) and step size as exact minimizers of the summed bounds, softmax
CRPO against the LP optimum, its switching rule and its output rule, the within-task bound with the exact
optimum, eps_t against the exact distance, and the online protocol where the learned alpha must beat the
same learner at its starting alpha. Then the neural path: the handed-out policy, the leader of phi reached
by distillation, eps_t and alpha's closed form from the logged terms."""
import numpy as np
import pytest
import torch
from scipy.optimize import minimize, minimize_scalar

from safemeta.algorithms.meta_srl.tabular_learner import (distance_grad, distance_term, estimated_visitation,
                                                          ftl_step_size, local_norm, step_size_bound)
from safemeta.algorithms.meta_srl.tabular_crpo import crpo, softmax
from safemeta.cli import main
from safemeta.evaluation.store import read_record
from safemeta.online.protocol import build_online_config, run_online
from safemeta.rollout.tabular import evaluate, q_values, solve_constrained, state_occupancy


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
    """ftl_step_size against a numerical minimizer of sum_tau w_tau U_tau, U written out here (not through
    step_size_bound, which shares the implementation's formula); step_size_bound is U."""
    rng = np.random.default_rng(1)
    dist, eps, g2 = rng.uniform(0.01, 2, 8), rng.uniform(0, 0.3, 8), rng.uniform(10, 1e4, 8)
    np.testing.assert_allclose(step_size_bound(0.3, dist, eps, g2), (dist + eps * eps) / 0.3 + 0.3 * g2)
    for weights in (np.ones(8), 0.7 ** np.arange(7, -1, -1)):
        alpha = ftl_step_size(dist, eps, g2, weights)
        total = lambda a, w=weights: float((w * ((dist + eps * eps) / a + a * g2)).sum())  # noqa: E731
        best = minimize_scalar(lambda la: total(np.exp(la)), bounds=(-20, 5), method="bounded",
                               options={"xatol": 1e-10})
        assert alpha == pytest.approx(np.exp(best.x), rel=1e-4)
        assert total(alpha) <= min(total(alpha * 1.01), total(alpha / 1.01))


def _observe_tasks(learner_cfg: dict, n_tasks: int, steps: int = 3, seed: int = 0):
    """An online_dualdice learner after ``n_tasks`` tasks; (learner, [(d_hat, pi_hat)])."""
    from safemeta import registry
    from safemeta.algorithms.meta_srl.base import OnlineContext

    _, lcfg, fam = build_online_config({"tasks": n_tasks, "steps": steps, "learner_cfg": learner_cfg})
    rng = np.random.default_rng(seed)
    learner = registry.online.get("online_dualdice")(lcfg, OnlineContext(25, 4, 0.99, steps, 2e-3, rng))
    terms = []
    for task in fam.sample(n_tasks, "train", rng):
        cmdp = fam.cmdp(task)
        phi, alpha = learner.propose()
        run = crpo(cmdp, phi, alpha, steps, fam.cost_limit, 0.0, 20, fam.horizon, rng)
        learner.observe(run, phi, alpha)
        terms.append((learner.last_visitation, run.policy))
    return learner, terms


def test_ftl_initialization_minimizes_the_summed_distance():
    """Without shrinkage Meta-SRL's phi after two tasks (FTL) is the minimizer of D_1(phi) + D_2(phi): zero
    gradient, and no perturbation lowers it."""
    learner, terms = _observe_tasks({"phi_update": "ftl", "shrinkage": 0.0}, 2)
    total = lambda p: sum(distance_term(d, pi, p) for d, pi in terms)  # noqa: E731
    phi, rng = learner.phi, np.random.default_rng(1)
    assert np.abs(sum(distance_grad(d, pi, phi) for d, pi in terms)).max() < 1e-8
    for _ in range(20):
        assert total(phi + 0.05 * rng.standard_normal(phi.shape)) > total(phi)


def test_shrink_is_the_kl_projection_onto_the_shrunk_simplex():
    """shrink(p) = argmin_{q >= gamma_s / A} KL(p || q) (the FTL leader's form) = argmin KL(q || p) (the
    Bregman projection), checked against a numerical solve; it leaves points inside the set alone."""
    from safemeta.algorithms.meta_srl.tabular_learner import shrink

    rng = np.random.default_rng(0)
    gamma_s, n_a = 0.2, 4
    floor = gamma_s / n_a
    for p in [np.array([0.97, 0.02, 0.01, 0.0]), *rng.dirichlet(np.full(n_a, 0.3), size=5)]:
        q = shrink(p[None], gamma_s)[0]
        assert q.min() >= floor - 1e-12 and q.sum() == pytest.approx(1.0)
        for objective in (lambda x: (p * (np.log(np.clip(p, 1e-300, None)) - np.log(x))).sum(),
                          lambda x: (x * (np.log(x) - np.log(np.clip(p, 1e-12, None)))).sum()):
            best = minimize(objective, np.full(n_a, 1.0 / n_a), method="SLSQP", bounds=[(floor, 1.0)] * n_a,
                            constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1.0}],
                            options={"ftol": 1e-14, "maxiter": 500})
            np.testing.assert_allclose(q, best.x, atol=2e-4)
    inside = np.array([[0.4, 0.3, 0.2, 0.1]])
    np.testing.assert_allclose(shrink(inside, gamma_s), inside)


def test_the_initialization_stays_on_the_shrunk_simplex_as_the_constrained_leader():
    """With shrinkage gamma_s every probability of pi_phi stays >= gamma_s / |A| (the unshrunk leader, the
    visitation-weighted mixture of the handed-out policies, goes below it), and phi is the minimizer of the
    summed distance *over that set*: no perturbation projected back into it lowers the sum."""
    from safemeta.algorithms.meta_srl.tabular_learner import shrink

    gamma_s = 0.2
    learner, terms = _observe_tasks({"phi_update": "ftl", "shrinkage": gamma_s}, 3, steps=5)
    pi_phi = softmax(learner.phi)
    assert pi_phi.min() >= gamma_s / 4 - 1e-12
    mass, mix = sum(d for d, _ in terms), sum(d[:, None] * pi for d, pi in terms)
    assert (mix[mass > 0] / mass[mass > 0, None]).min() < 0.5 * gamma_s / 4  # the unshrunk leader leaves the set
    total = lambda p: sum(distance_term(d, pi, p) for d, pi in terms)  # noqa: E731
    rng = np.random.default_rng(1)
    for _ in range(20):
        moved = np.log(shrink(softmax(learner.phi + 0.05 * rng.standard_normal(pi_phi.shape)), gamma_s))
        assert total(moved) >= total(learner.phi) - 1e-12
    learner, _ = _observe_tasks({"phi_update": "ogd", "shrinkage": gamma_s}, 3, steps=5)
    assert softmax(learner.phi).min() >= gamma_s / 4 - 1e-12


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


def test_crpo_hands_out_the_latest_iterate_within_the_limit_and_the_protocol_scores_it(monkeypatch):
    """CRPO's output rule (Algorithm 1 outputs from N_0): the handed-out policy is the latest iterate whose
    exact J_c is within d + eta (the last where none is); the protocol's gap and violation are that policy's,
    recomputed here from the LP optimum, and the learner learns from that policy, not the last iterate."""
    import safemeta.online.protocol as online

    seen = []
    original = online.crpo

    def recording(cmdp, *args, **kw):
        run = original(cmdp, *args, **kw)
        seen.append((cmdp, run))
        return run

    monkeypatch.setattr(online, "crpo", recording)
    cfg, lcfg, fam = build_online_config({"learner": "random", "tasks": 8, "steps": 5, "alpha0": 0.05, "seed": 1,
                                          "env_cfg": {"similarity": 0.2}})
    rows = run_online(cfg, lcfg, fam)
    d, handed_earlier = fam.cost_limit_for("train"), 0
    for row, (cmdp, run) in zip(rows, seen):
        j_c = [evaluate(cmdp, softmax(theta))[1] for theta in run.path]
        within = [k for k, jc in enumerate(j_c) if jc <= d + cfg.tolerance]
        k = within[-1] if within else len(run.path) - 1
        assert run.out_index == k
        np.testing.assert_allclose(run.policy, softmax(run.path[k]), atol=1e-12)
        j_r, j_c_k = evaluate(cmdp, softmax(run.path[k]))
        assert row["gap"] == pytest.approx(solve_constrained(cmdp, d).J_r - j_r, abs=1e-9)
        assert row["violation"] == pytest.approx(max(0.0, j_c_k - d), abs=1e-9)
        handed_earlier += k < len(run.path) - 1
    assert handed_earlier >= 2  # the rule mattered: the last iterate was infeasible on some tasks
    # the uniform rule (Algorithm 1 literally) draws from N_0 = the reward-step iterates, all of them in time
    for cmdp, run in seen:
        n0 = [k for k in range(len(run.path) - 1) if run.returns[k][1] <= d]
        if len(n0) >= 2:
            break
    draws = {crpo(cmdp, run.path[0], 0.05, 5, d, 0.0, 1, 5, np.random.default_rng(i), "uniform").out_index
             for i in range(60)}
    assert len(n0) >= 2 and draws == set(n0)


def test_within_task_bound_holds_with_the_exact_optimum(family):
    """The bound Meta-SRL learns on (the online_dualdice module docstring), with the LP optimum of each task
    of an online Meta-SRL sequence (phi_t, alpha_t the learner's). Per task, exactly (no estimate):
    * the telescoping it rests on: alpha sum_{N_0} (J* - J_k) + alpha sum_{not N_0} (J_c(pi_k) - J_c*) =
      D*(pi_0) - D*(pi_M) + sum_k E_{d*} log E_{pi_k} exp(+-eta A_k),  eta = alpha / (1 - gamma);
    * the bound: sum_{N_0} (J* - J_k) <= D*_t(phi_t) / alpha + alpha G*^2 - tol (M - |N_0|);
    and over the sequence, the expected TAOG of Algorithm 1's output (uniform over N_0) is at most the mean
    bound, its TACV at most tol."""
    from scipy.special import logsumexp

    from safemeta.online.protocol import nearest_optimum

    cfg, lcfg, fam = build_online_config({"tasks": 6, "steps": 5, "tolerance": 0.05, "env_cfg": {"similarity": 0.9}})
    from safemeta import registry
    from safemeta.algorithms.meta_srl.base import OnlineContext

    rng = np.random.default_rng(3)
    learner = registry.online.get("online_dualdice")(lcfg, OnlineContext(25, 4, 0.99, 5, 2e-3, rng))
    d, tol, m = fam.cost_limit_for("train"), cfg.tolerance, cfg.steps
    gaps, bounds, viols, slack = [], [], [], []
    for task in fam.sample(cfg.tasks, "train", rng):
        cmdp = fam.cmdp(task)
        phi, alpha = learner.propose()
        run = crpo(cmdp, phi, alpha, m, d, tol, 20, fam.horizon, rng)
        learner.observe(run, phi, alpha)
        opt = solve_constrained(cmdp, d)
        pi_star = nearest_optimum(cmdp, opt.pi, phi)  # an exact optimum (same J_r, J_c)
        j_star, jc_star = evaluate(cmdp, pi_star)
        assert j_star == pytest.approx(opt.J_r, abs=1e-7) and jc_star <= d + 1e-7
        d_star = state_occupancy(cmdp, pi_star)
        kl = lambda theta: float((d_star * (pi_star * (np.log(np.clip(pi_star, 1e-300, None))  # noqa: E731
                                                       - (theta - logsumexp(theta, -1, keepdims=True)))).sum(-1)).sum())
        eta, lhs, log_mgf, g2 = alpha / (1 - cmdp.gamma), 0.0, 0.0, 0.0
        n0 = [k for k in range(m) if run.returns[k][1] <= d + tol]
        for k in range(m):
            pi_k = softmax(run.path[k])
            sign, signal = (1.0, "r") if k in n0 else (-1.0, "c")
            q = q_values(cmdp, pi_k, signal)
            adv = q - (pi_k * q).sum(-1, keepdims=True)
            log_mgf += float((d_star * logsumexp(sign * eta * adv, axis=-1, b=pi_k)).sum())
            g2 += float((d_star * np.ptp(q, axis=-1) ** 2).sum()) / (8 * (1 - cmdp.gamma) ** 2)
            j_r, j_c = run.returns[k]
            lhs += alpha * (j_star - j_r) if k in n0 else alpha * (j_c - jc_star)
        assert lhs == pytest.approx(kl(run.path[0]) - kl(run.path[-1]) + log_mgf, rel=1e-6, abs=1e-9)
        bound = kl(phi) / alpha + alpha * g2 - tol * (m - len(n0))
        gap_sum = sum(j_star - run.returns[k][0] for k in n0)
        assert gap_sum <= bound + 1e-9
        if n0:
            gaps.append(gap_sum / len(n0))
            bounds.append(bound / len(n0))
            viols.append(np.mean([max(0.0, run.returns[k][1] - d) for k in n0]))
            slack.append(bound - gap_sum)
    assert len(gaps) >= 3
    assert np.mean(gaps) <= np.mean(bounds) and max(viols) <= tol + 1e-12


def test_eps_estimates_the_distance_to_the_optimum():
    """eps_t's suboptimality term (pi_hat's KL to its per-state mode, on the states CRPO moved) brings
    D_hat_t + eps_t^2 to the exact distance term D*_t(phi_t) of the optimum nearest to phi_t; without it,
    D_hat_t alone (against a 5-step iterate) falls short."""
    ratios = {}
    for term in (True, False):
        cfg, lcfg, fam = build_online_config({"tasks": 8, "env_cfg": {"similarity": 0.9},
                                              "learner_cfg": {"suboptimality_eps": term}})
        rows = run_online(cfg, lcfg, fam)
        ratios[term] = [(r["learner/distance"] + r["learner/eps"] ** 2) / r["learner/distance_optimum"] for r in rows]
        if term:
            assert all(r["learner/eps_suboptimality"] > 0 for r in rows)
    assert 0.5 < np.median(ratios[True]) < 2.0, ratios[True]
    assert np.median(ratios[False]) < 0.75, ratios[False]


def test_dualdice_visitation_of_the_final_policy_is_close_to_the_exact_one(family):
    cmdp = family.cmdp(family.sample(1, "train", np.random.default_rng(7))[0])
    run = crpo(cmdp, np.zeros((25, 4)), 3e-3, 5, family.cost_limit, 0.0, 200, family.horizon,
               np.random.default_rng(0))
    d_hat, mean_w = estimated_visitation(run, 25, 4, cmdp.gamma)
    assert 0.5 * np.abs(d_hat - state_occupancy(cmdp, run.policy)).sum() < 0.05
    assert mean_w == pytest.approx(1.0, abs=0.05)


def test_learned_alpha_beats_the_same_learner_at_its_starting_alpha():
    """On a high-similarity sequence, Meta-SRL (phi and alpha learned, starting at alpha0) reaches less than
    half the TAOG of the same learner with alpha held at alpha0 and of plain averaging at alpha0: the
    learned step size is what it buys over untuned baselines; and its gap falls along the sequence."""
    out = {}
    for label, learner, lcfg in (("learned", "online_dualdice", {}),
                                 ("fixed", "online_dualdice", {"alpha_min": 0.002, "alpha_max": 0.002}),
                                 ("averaging", "averaging", {})):
        cfg, lc, fam = build_online_config({"learner": learner, "tasks": 12, "steps": 5, "seed": 0, "alpha0": 0.002,
                                            "learner_cfg": lcfg, "env_cfg": {"similarity": 0.9}})
        out[label] = run_online(cfg, lc, fam)
    ours = out["learned"]
    for other in ("fixed", "averaging"):
        assert ours[-1]["taog"] < 0.5 * out[other][-1]["taog"], (ours[-1]["taog"], other, out[other][-1]["taog"])
    assert ours[-1]["alpha"] > 2 * 0.002
    assert np.mean([r["gap"] for r in ours[-4:]]) < 0.2 * ours[0]["gap"]  # it improves along the sequence
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


def test_online_grid_cells_live_in_the_store_and_the_board_is_rebuilt_from_it(tmp_path, capsys):
    """Each finished cell is one sealed record in the store; a rerun skips them; with ``runs/`` gone the board
    is rebuilt byte for byte from the store; a truncated or edited record is named (exit 2), never used."""
    import gzip
    import json
    import shutil

    grid = tmp_path / "g.yaml"
    store = tmp_path / "store"
    grid.write_text(f"name: tiny\nlearners: [online_dualdice, fal]\nsettings: {{hi: {{env_cfg: {{similarity: 0.9}}}}}}\n"
                    f"seeds: [0, 1]\nbase: {{tasks: 3, steps: 2}}\nruns: {tmp_path / 'runs'}\nout: {tmp_path / 'lb'}\n"
                    f"store: {store}\n")
    assert main(["online", str(grid), "--no-progress"]) == 0
    board = (tmp_path / "lb" / "tiny.md").read_text()
    assert "| online_dualdice |" in board and "| fal |" in board and (tmp_path / "lb" / "tiny.png").exists()
    records = sorted(store.rglob("*.json.gz"))
    assert [p.name.split("-")[0] for p in records] == ["fal", "fal", "online_dualdice", "online_dualdice"]
    fal = read_record(records[1])
    assert fal["cell"]["learner"] == "fal" and fal["cell"]["seed"] == 1 and len(fal["rows"]) == 3
    assert fal["run"]["wall_time"] > 0 and fal["run"]["commit"]
    stamps = [p.stat().st_mtime_ns for p in records]
    shutil.rmtree(tmp_path / "runs", ignore_errors=True)
    (tmp_path / "lb" / "tiny.md").unlink()
    assert main(["online", str(grid), "--no-progress"]) == 0
    assert "4 cells, 0 run" in capsys.readouterr().err
    assert [p.stat().st_mtime_ns for p in records] == stamps  # finished cells are not rerun or overwritten
    assert (tmp_path / "lb" / "tiny.md").read_text() == board
    data = json.loads(gzip.decompress(records[0].read_bytes()))
    data["rows"][-1]["gap"] += 1.0  # a hand edit, digest left as it was
    records[0].write_bytes(gzip.compress(json.dumps(data).encode()))
    assert main(["online", str(grid), "--no-progress"]) == 2
    assert "was edited or corrupted" in capsys.readouterr().err
    records[0].write_bytes(records[0].read_bytes()[:50])
    assert main(["online", str(grid), "--no-progress"]) == 2
    assert "is truncated" in capsys.readouterr().err


# -- the neural path through the trainer (preset meta_srl) ----------------------------------------------

def test_discounted_visitation_restarts_at_episode_boundaries():
    import torch

    from safemeta.algorithms.outer.meta_srl import discounted_visitation
    from safemeta.rollout.batch import Batch

    z = torch.zeros(1, 4, 1)
    done = torch.tensor([False, True, False, False]).reshape(1, 4, 1)
    batch = Batch(obs=torch.zeros(1, 4, 1, 2), act=torch.zeros(1, 4, 1, 2), logp=z, rew=z, cost=z,
                  terminated=torch.zeros_like(done), truncated=done, next_obs=torch.zeros(1, 4, 1, 2),
                  ep_return=torch.zeros(1), ep_cost=torch.zeros(1), ep_count=torch.ones(1))
    w = discounted_visitation(batch, 0.5).flatten()
    expected = torch.tensor([1, 0.5, 1, 0.5]) / 3.0
    torch.testing.assert_close(w, expected)


@pytest.mark.parametrize("visitation", ["dualdice", "on_policy"])
def test_meta_srl_preset_learns_from_the_handed_out_policy_and_follows_the_leader(make_config, visitation):
    """Per iteration: CRPO ran with the learned alpha; eps_t is the floor plus DualDICE's residual (0 on-policy);
    alpha_{t+1} is the minimizer of the summed bounds built from the logged terms; phi is the leader of all
    tasks so far (the distillation stopped near it: more steps barely lower the loss, the gradient is small)
    and moved toward pi_hat_t. Resuming restores alpha, the history and the leader's targets."""
    from safemeta.training.trainer import MetaTrainer

    t = MetaTrainer(make_config(algo="meta_srl", trainer={"adapt_steps": 3, "tasks_per_iter": 1},
                                outer_cfg={"online_dualdice": {"visitation": visitation, "eps": 0.01}}))
    assert t.cfg.inner == "crpo" and t.outer.cfg.phi_update == "ftl"
    rows = []
    for i in range(3):
        row = t.train_iteration()
        rows.append(row)
        assert row["inner/step_size"] == pytest.approx(row["meta_srl/alpha"])  # CRPO ran with the learned alpha
        residual = 0.0 if visitation == "on_policy" else abs(row["meta_srl/mean_weight"] - 1.0)
        assert row["meta_srl/eps"] == pytest.approx(0.01 + residual)
        if visitation == "dualdice":
            assert 0 < residual < 0.05  # a real estimate, consistent to a few percent
        assert row["meta_srl/distance_after"] < 0.5 * row["meta_srl/distance"]  # phi moved toward pi_hat_t
        assert len(t.outer.targets) == i + 1
        assert row["meta_srl/leader_after"] <= row["meta_srl/leader_before"]
        assert row["meta_srl/leader_gap"] < 0.02 * row["meta_srl/leader_after"] + 1e-4
        # alpha_{t+1} = argmin_a sum_tau (D_tau + eps_tau^2) / a + a G_tau^2, clipped
        terms = [(r["meta_srl/distance"], r["meta_srl/eps"], r["meta_srl/G"] ** 2) for r in rows]
        best = minimize_scalar(lambda la: sum((dd + e**2) / np.exp(la) + np.exp(la) * g for dd, e, g in terms),
                               bounds=(-15, 5), method="bounded", options={"xatol": 1e-10})
        cfg = t.outer.cfg
        assert row["meta_srl/alpha_next"] == pytest.approx(np.clip(np.exp(best.x), cfg.alpha_min, cfg.alpha_max),
                                                           rel=1e-3)
    state = t.state_dict()
    fresh = MetaTrainer(make_config(algo="meta_srl", trainer={"adapt_steps": 3, "tasks_per_iter": 1}))
    fresh.load_state_dict(state)
    assert fresh.outer.alpha == t.outer.alpha and fresh.outer.history == t.outer.history
    assert len(fresh.outer.targets) == 3 and torch.equal(fresh.outer.targets[0].mean, t.outer.targets[0].mean)


def test_handed_out_is_the_inner_solvers_output_rule(make_config):
    """`handed_out` picks, per task, the latest iterate whose own batch was within d + eta (``inner.output``),
    theta_K where none was; with a limit between the iterates' costs some tasks hand out an earlier one."""
    from safemeta.algorithms.outer.meta_srl import handed_out
    from safemeta.training.model import stacked_theta
    from safemeta.training.trainer import MetaTrainer

    t = MetaTrainer(make_config(algo="meta_srl", trainer={"adapt_steps": 3, "tasks_per_iter": 1}))
    tasks = t.family.sample(4, "train", np.random.default_rng(0))
    venv = t.family.make(tasks, 4, "cpu", seed=0)
    result = t.adapter.adapt(stacked_theta(t.meta, 4), venv, 3, t.inner.init_state(4, 1e9), t.meta.critics_for(4), 1,
                             torch.Generator().manual_seed(0), final_rollout=True)
    costs = torch.stack([b.ep_constraint_cost for b in result.batches])  # [K + 1, N]
    result.state["cost_limit"] = costs.median(0).values  # per task: some iterates within, some not
    params, idx = handed_out(t.inner, result)
    expected = t.inner.output(result)
    for k in params:
        torch.testing.assert_close(params[k], expected[k])
    for i in range(4):
        within = [k for k in range(4) if costs[k, i] <= result.state["cost_limit"][i] + t.inner.tolerance]
        assert int(idx[i]) == (within[-1] if within else 3)
    assert (idx < 3).any()


def test_meta_srl_refuses_an_inner_solver_without_step_sizes(make_config):
    from safemeta.errors import UserError
    from safemeta.training.trainer import MetaTrainer

    with pytest.raises(UserError, match="'online_dualdice' sets each task's inner step size, and inner solver "
                                        "'trpolag' takes no step size. Inner solvers that can: crpo"):
        MetaTrainer(make_config(algo="meta_srl", inner="trpolag"))


def test_continuous_online_protocol_runs_every_learner_and_reuses_its_references(tmp_path):
    from safemeta.online.continuous import run_online_continuous

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
        assert all(np.isfinite(r["gap"]) for r in rows)
    assert "learner/alpha_next" in results["meta_srl"][-1]


@pytest.mark.parametrize("learner", ["meta_srl", "fal"])
def test_continuous_protocol_scores_and_learns_the_handed_out_policy(tmp_path, monkeypatch, learner):
    """The scored rollout is a fresh one of the policy CRPO hands out (not theta_K, not the batch that
    selected it), its return and cost are the row's; fal averages the handed-out parameters."""
    import safemeta.online.continuous as oc
    from safemeta.training.adaptation import Adapter
    from safemeta.algorithms.outer.meta_srl import handed_out
    from safemeta.rollout.collector import Collector

    results, collected = [], []
    adapt, collect = Adapter.adapt, Collector.collect

    def recorded(self, init, *args, **kw):
        results.append(adapt(self, init, *args, **kw))
        collected.clear()
        return results[-1]

    def collecting(self, params, *args, **kw):
        batch = collect(self, params, *args, **kw)
        collected.append(({k: v.clone() for k, v in params.items()}, batch))
        return batch

    monkeypatch.setattr(Adapter, "adapt", recorded)
    monkeypatch.setattr(Collector, "collect", collecting)
    scored, made = [], []
    make = oc.make_learner

    def make_learner(cfg, trainer):
        out = make(cfg, trainer)
        made.append(out)
        observe = out.observe

        def watched(result, task):
            scored.append(collected[-1])  # the rollout right after the adaptation: the scoring one
            return observe(result, task)

        out.observe = watched
        return out

    monkeypatch.setattr(oc, "make_learner", make_learner)
    cfg, _, _ = build_online_config({"env": "tiny-nav", "learner": learner, "tasks": 3, "steps": 2,
                                     "reference_steps": 2, "envs_per_task": 4})
    rows = oc.run_online_continuous(cfg, tmp_path / "reference.json")
    task_results, lrn = results[-3:], made[-1]
    inner = lrn.trainer.inner
    for i, (row, result, (params, batch)) in enumerate(zip(rows, task_results, scored)):
        pi_hat, idx = handed_out(inner, result)
        assert row["out_index"] == int(idx[0])
        for k in pi_hat:
            torch.testing.assert_close(params[k], pi_hat[k])
        assert row["J_r"] == pytest.approx(float(batch.ep_return[0]))
        assert row["J_c"] == pytest.approx(float(batch.ep_cost[0]))
        assert all(batch is not b for b in result.batches)
        if learner == "fal":  # it averages the handed-out parameters
            for k in pi_hat:
                torch.testing.assert_close(lrn.past[i][k], pi_hat[k][0])
        else:  # meta_srl's leader distils toward the handed-out policy
            target = lrn.trainer.outer.targets[i]
            mean, _ = inner.actor_fn(pi_hat, target.states.unsqueeze(0))
            torch.testing.assert_close(target.mean, mean[0])
    assert any(r["out_index"] < cfg.steps for r in rows)  # an earlier iterate was handed out


def _tiny_actor():
    from safemeta.rollout.policy import GaussianActor, batched, init_params

    torch.manual_seed(0)
    actor = GaussianActor(3, 2, (16,), "tanh", 0.0)
    return batched(actor), init_params(actor)


def _distill(actor_fn, theta, targets, **kw):
    """`distill_mixture` with the learner's default budget (as meta_srl and averaging run it)."""
    from safemeta.algorithms.outer.meta_srl import NeuralOnlineDualDICEConfig
    from safemeta.online.continuous import distill_mixture

    cfg = NeuralOnlineDualDICEConfig()
    return distill_mixture(actor_fn, theta, targets, cfg.distill_iters, cfg.lr_phi, tol=cfg.distill_tol,
                           check_iters=cfg.leader_check_iters, **kw)


def test_averaging_distils_toward_a_single_past_policy():
    from safemeta.online.continuous import policy_target
    from safemeta.rollout.params import stack

    actor_fn, theta = _tiny_actor()
    gen = torch.Generator().manual_seed(0)
    pi_hat = {k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in theta.items()}
    target = policy_target(actor_fn, stack(pi_hat, 1), torch.randn(2, 300, 3, generator=gen), 256, gen)
    assert target.states.shape == (256, 3)  # a subsample of the rollout's states is kept
    res = _distill(actor_fn, theta, [target])
    assert res.after < 0.01 * res.before  # one past task: theta_2 is (nearly) pi_hat_1


@pytest.mark.parametrize("forget", [None, 0.5])
def test_the_default_distillation_reaches_the_leader(forget):
    """pi_hat_1, pi_hat_2 share their mean and have log std -1, +1: the Gaussian closest in KL to their
    w-weighted mixture (the M-projection, the leader of the summed distance terms) has variance
    (w_1 e^-2 + w_2 e^2) / (w_1 + w_2); static regret w = (1, 1), dynamic (forget, 1). The learner's default
    budget gets there (the pre-issue-18 budget, 20 Adam steps at 0.01, moves log std by at most 0.2 of the
    0.66 needed), stops early, and reports a small distance to the minimizer; fal's parameter mean (and
    theta_1) has log std 0."""
    import math

    from safemeta.online.continuous import mixture_distance, policy_target
    from safemeta.rollout.params import stack

    actor_fn, theta = _tiny_actor()
    gen = torch.Generator().manual_seed(0)
    past = [dict(theta, log_std=torch.full((2,), s)) for s in (-1.0, 1.0)]
    targets = [policy_target(actor_fn, stack(p, 1), torch.randn(200, 3, generator=gen), 256, gen) for p in past]
    w = torch.tensor([1.0, 1.0] if forget is None else [forget, 1.0])
    distance = lambda p: float(mixture_distance(actor_fn, p, targets, w))  # noqa: E731
    res = _distill(actor_fn, theta, targets, task_weights=w)
    assert res.after == pytest.approx(distance(res.theta))
    expected = 0.5 * math.log(float(w[0] * math.exp(-2) + w[1] * math.exp(2)) / float(w.sum()))
    torch.testing.assert_close(res.theta["log_std"], torch.full((2,), expected), atol=0.02, rtol=0)
    torch.testing.assert_close(res.theta["mean.2.weight"], theta["mean.2.weight"])  # the means already agree
    assert res.steps < 500 and res.leader_gap < 1e-3 and res.grad_norm < 0.05
    fal = {k: (past[0][k] + past[1][k]) / 2 for k in theta}
    assert res.after < min(distance(p) for p in past + [fal, theta]) - 0.05


@pytest.mark.parametrize("learner", ["meta_srl", "random", "pretrained", "fal", "averaging"])
def test_every_continuous_learner_carries_its_critics_initialization(tmp_path, monkeypatch, learner):
    """Task 2's critics start from the learner's carried initialization as fitted on task 1's first batch
    (`fit_meta_critics`), not from the shared init; task 1's start from the shared init (pretrained: its own)."""
    import safemeta.training.model
    import safemeta.online.continuous as oc
    from safemeta.training.adaptation import Adapter

    shared, starts, fits, results = {}, [], [], []
    make, fit, adapt, critics = oc.make_learner, safemeta.training.model.fit_meta_critics, Adapter.adapt, oc.Learner.critics

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
    monkeypatch.setattr(safemeta.training.model, "fit_meta_critics", fitted)
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
    from safemeta.online.continuous import CONTINUOUS_LEARNERS, ContinuousOnlineConfig, make_learner

    assert "averaging" in CONTINUOUS_LEARNERS
    with pytest.raises(UserError, match="'nope' is not one of meta_srl, random, pretrained, fal, averaging"):
        build_online_config({"env": "tiny-nav", "learner": "nope"})
    with pytest.raises(UserError, match="valid: meta_srl, random, pretrained, fal, averaging"):
        make_learner(ContinuousOnlineConfig(env="tiny-nav", learner="nope"), None)
