"""Meta-TRPO (`meta_trpo`: `dco_trpo` over differentiable `trpo` steps): the K = 2 meta-gradient against central
finite differences of the replayed F with the rollouts held fixed; the differentiable TRPO step's values are
the plain step's; the meta step stays in its KL trust region; the preset trains, also sharded (the meta step
from the shards' summed terms); a non-differentiable inner is refused."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import safemeta
from safemeta.training.adaptation import AdaptationResult, replay
from safemeta.algorithms.inner.trpo import TRPO, TRPOConfig
from safemeta.algorithms.inner.trpolag import TRPOLag, TRPOLagConfig
from safemeta.algorithms.outer.dco_cpo import meta_gradients, post_adaptation_objectives
from safemeta.errors import UserError
from safemeta.rollout.params import flat, stack, unflat
from safemeta.training.trainer import MetaTrainer

K, M = 2, 2


def _trainer(make_config, inner=None, **outer):
    # init_log_std -0.5 as in test_meta_cpo.py: away from a line search's kink at this fixture's theta;
    # cg_iters 200: the implicit CG gradient is exact for a converged solve (it stops at rtol long before)
    cfg = make_config(algo="meta_trpo", policy={"hidden_sizes": [8], "init_log_std": -0.5},
                      trainer={"tasks_per_iter": M, "adapt_steps": K, "envs_per_task": 4},
                      inner_cfg={"trpo": {"max_kl": 0.02, "cg_iters": 200, **(inner or {})}},
                      outer_cfg={"dco_trpo": outer})
    return MetaTrainer(cfg)


@pytest.fixture(scope="module")
def fixed_rollouts(tmp_path_factory):
    """K + 1 batches of M tiny-nav tasks collected by one real adaptation, in float64, and theta."""
    from conftest import fixed_adaptation, tiny_config

    t = _trainer(lambda **o: tiny_config(tmp_path_factory.mktemp("mt"), **o))
    return (t, *fixed_adaptation(t, M, K))


def _post_adaptation(t, theta, batches, state, differentiable):
    phi = replay(t.inner, stack(theta, M), batches[:K], dict(state), differentiable=differentiable)
    return phi, post_adaptation_objectives(t.inner, phi, batches[K], state)


@pytest.mark.parametrize("max_kl", [0.02, 0.3])  # full steps; a backtracked step (fraction 0.8 for a task)
def test_meta_gradient_matches_finite_differences(fixed_rollouts, make_config, max_kl):
    _, batches, state, theta = fixed_rollouts
    t = _trainer(make_config, inner={"max_kl": max_kl})
    leaves = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
    phi, _ = _post_adaptation(t, leaves, batches, state, differentiable=True)
    grad_f, _, _, _ = meta_gradients(t.inner, leaves, AdaptationResult([stack(leaves, M), phi], batches, state, None))
    theta1 = stack(theta, 1)
    gen = torch.Generator().manual_seed(0)
    eps = 1e-5
    for _ in range(3):
        v = torch.randn(grad_f.shape, dtype=torch.float64, generator=gen)
        vals = []
        for sign in (1, -1):
            moved = {k: x[0] for k, x in unflat(flat(theta1) + sign * eps * v, theta1).items()}
            with torch.no_grad():
                _, (f, _) = _post_adaptation(t, moved, batches, state, differentiable=False)
            vals.append(f.mean())
        fd = (vals[0] - vals[1]) / (2 * eps)
        torch.testing.assert_close((grad_f * v).sum(), fd, rtol=2e-3, atol=1e-6)
    # the K steps' Jacobian matters: the first-order meta-gradient is another vector
    fo_f, _, _, _ = meta_gradients(t.inner, theta, AdaptationResult([stack(theta, M), phi], batches, state, None),
                                   first_order=True)
    assert float((grad_f - fo_f).norm()) > 1e-3 * float(grad_f.norm())


@pytest.mark.parametrize("max_kl,fractions", [(0.02, {1.0}), (1.0, {0.8, 1.0})])
def test_differentiable_step_has_the_plain_steps_values(fixed_rollouts, max_kl, fractions):
    t, batches, state, theta = fixed_rollouts
    solver = TRPO(TRPOConfig(max_kl=max_kl), t.actor)
    params = stack({k: v.clone().requires_grad_(True) for k, v in theta.items()}, M)
    seen = set()
    for batch in batches[:K]:
        new_d, _, info_d = solver.step(params, batch, dict(state), differentiable=True)
        new_p, _, info_p = solver.step({k: v.detach() for k, v in params.items()}, batch, dict(state))
        assert all(v.requires_grad for v in new_d.values()) and not any(v.requires_grad for v in new_p.values())
        for k in new_p:
            torch.testing.assert_close(new_d[k].detach(), new_p[k], rtol=0, atol=1e-10)
        for k in ("kl", "surrogate_gain", "step_fraction", "accepted"):
            torch.testing.assert_close(info_d[k], info_p[k], rtol=1e-8, atol=1e-12)
        seen |= {round(float(f), 6) for f in info_p["step_fraction"]}
        params = new_d
    assert seen == fractions  # the steps move (full steps, and with a wide region a backtracked one)


# delta 5e-3: the full step is taken (replayed F checked); delta 2: the quadratic model overshoots, the line
# search backtracks on the KL alone
@pytest.mark.parametrize("delta,replay_line_search,fraction", [(5e-3, True, 1.0), (2.0, False, 0.8)])
def test_meta_step_respects_the_kl_trust_region(make_config, delta, replay_line_search, fraction):
    t = _trainer(make_config, max_kl=delta, metric="fisher", replay_line_search=replay_line_search)
    before = {k: v.detach().clone().unsqueeze(0) for k, v in t.meta.theta.items()}
    captured = {}
    original = t.outer.update

    def spy(result, tasks):
        captured["result"] = result
        captured["f"] = meta_gradients(t.inner, t.meta.theta, result)[0]
        return original(result, tasks)

    t.outer.update = spy
    m = t.train_iteration()
    after = {k: v.detach().unsqueeze(0) for k, v in t.meta.theta.items()}
    with torch.no_grad():
        kl = float(t.inner.mean_kl(before, after, captured["result"].batches[0].pooled())[0])
    assert m["meta/step_fraction"] == pytest.approx(fraction) and 0 < kl <= delta
    assert kl == pytest.approx(m["meta/kl"], rel=1e-5)
    assert float((captured["f"] * (flat(after) - flat(before))).sum()) > 0  # along the ascent direction of F
    if replay_line_search:
        f0, f1 = (t.outer.replayed_objectives(p, captured["result"])[0] for p in (before, after))
        assert float(f1) >= float(f0)
    assert {"meta_grad_norm", "meta/F", "meta/G"} <= set(m)


def test_preset_trains_two_meta_iterations(make_config):
    cfg = make_config(algo="meta_trpo", policy={"hidden_sizes": [8]},
                      trainer={"iters": 2, "tasks_per_iter": 2, "adapt_steps": 2, "envs_per_task": 2,
                               "eval_every": 2, "checkpoint_every": 2},
                      eval={"tasks": 1, "adapt_steps": 1, "envs_per_task": 2})
    assert (cfg.inner, cfg.outer) == ("trpo", "dco_trpo")
    run = safemeta.train(cfg)
    assert run.trainer.iteration == 2
    rows = [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [1, 2]
    for r in rows:
        assert np.isfinite([r["meta/F"], r["meta/G"], r["meta_grad_norm"]]).all()
        assert 0 <= r["meta/kl"] <= cfg.outer_params.max_kl


def test_refuses_a_non_differentiable_inner(make_config):
    with pytest.raises(UserError, match="Outer updater 'dco_trpo' differentiates through the inner steps, and inner "
                                        "solver 'trpolag' has no differentiable step. "
                                        "Inner solvers that can: cpo, (.*, )?trpo"):  # plugins may add more
        MetaTrainer(make_config(algo="meta_trpo", inner="trpolag"))
    with pytest.raises(NotImplementedError):
        TRPOLag(TRPOLagConfig(), actor=torch.nn.Linear(1, 1)).step({}, None, {}, differentiable=True)


def test_sharded_run_steps_from_the_shards_meta_terms(make_config):
    """With 2 shards (local executor) each shard's dF/dtheta, F, G arrive summed in ``result.meta_terms`` (the
    graph is gone from the merged result) and the meta step is taken from them."""
    t = _trainer(make_config, replay_line_search=False)
    sharded = MetaTrainer(replace(t.cfg, trainer=replace(t.cfg.trainer, shards=2)))
    captured = {}
    original = sharded.outer.update

    def spy(result, tasks):
        captured["terms"] = {k: v / result.meta_terms["n"] for k, v in result.meta_terms.items()}
        return original(result, tasks)

    sharded.outer.update = spy
    m = sharded.train_iteration()
    assert captured["terms"]["grad_f"].shape == (1, sum(v.numel() for v in t.meta.theta.values()))
    assert m["meta/step_fraction"] > 0 and np.isfinite([m["meta/F"], m["meta/G"], m["meta_grad_norm"]]).all()
    assert m["meta/F"] == pytest.approx(float(captured["terms"]["f"]))
