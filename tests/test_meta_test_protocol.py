"""The meta-test protocol (README "Meta-test protocol"): the test cost limit, fresh evaluation episodes after
each step, the common-solver view and what its multipliers start from, the scratch baselines, bad input."""
import json
import textwrap

import pytest
import torch

import safemeta
from safemeta.errors import UserError
from safemeta.training.trainer import MetaTrainer, planned_iterations
from safemeta.evaluation.meta_test import evaluate
from tests.conftest import run_cli


def test_meta_test_scores_against_the_test_cost_limit():
    cfg = safemeta.resolve_config([("t", {"algo": "random", "env": "car-circle-hazard",
                                          "eval": {"tasks": 2, "adapt_steps": 0, "episodes": 2}})])
    t = MetaTrainer(cfg)
    assert t.family.cost_limit_for("train") == 10.0
    report = evaluate(t)
    assert report["cost_limit"] == 5.0 and report["protocol"]["cost_limit"] == 5.0
    step = report["steps"][0]["per_task"]
    assert step["within_limit"] == [c <= 5.0 for c in step["cost"]]


class _Spy:
    """Records every collection (params, number of envs, batch) and every batch an inner step trained on."""

    def __init__(self, trainer, monkeypatch):
        self.collected, self.trained_on = [], []
        collect, step = trainer.adapter.collector.collect, type(trainer.inner).step

        def spy_collect(params, venv, episodes, gen):
            batch = collect(params, venv, episodes, gen)
            self.collected.append(({k: v.detach().clone() for k, v in params.items()}, venv.num_envs, batch))
            return batch

        def spy_step(solver, params, batch, state, differentiable=False):
            self.trained_on.append(batch)
            return step(solver, params, batch, state, differentiable)

        monkeypatch.setattr(trainer.adapter.collector, "collect", spy_collect)
        monkeypatch.setattr(type(trainer.inner), "step", spy_step)


def test_each_step_is_scored_on_fresh_episodes_of_the_policy_after_it(make_config, monkeypatch):
    t = MetaTrainer(make_config(eval={"tasks": 3, "adapt_steps": 2, "envs_per_task": 4, "episodes": 6}))
    spy = _Spy(t, monkeypatch)
    report = evaluate(t)
    scored = [c for c in spy.collected if c[1] == 3 * 6]  # the evaluation venv: 6 episodes x 3 tasks
    adapting = [c for c in spy.collected if c[1] == 3 * 4]
    assert len(scored) == 3 and len(adapting) == 2 and len(spy.trained_on) == 2
    for k, (params, _, batch) in enumerate(scored):
        assert report["steps"][k]["per_task"]["return"] == batch.ep_return.tolist()
        assert all(batch is not b for b in spy.trained_on)
        # theta_k is the policy after k steps: the meta-policy, then each step's result (trpo hands out the last)
        start = adapting[k][0] if k < 2 else None
        if start is not None:
            assert all(torch.equal(params[n], start[n]) for n in params)
    assert not all(torch.equal(scored[1][0][n], scored[0][0][n]) for n in scored[0][0])  # the step moved theta
    # the cost paid while adapting is the adaptation batches' own episode cost, summed
    paid = [(b.ep_cost * b.ep_count).tolist() for _, _, b in adapting]
    assert report["steps"][0]["per_task"]["cost_paid"] == [0.0, 0.0, 0.0]
    assert report["steps"][2]["per_task"]["cost_paid"] == pytest.approx([a + b for a, b in zip(*paid)])
    assert report["steps"][0]["per_task"]["adapt_cost"] == adapting[0][2].ep_cost.tolist()


def _first_lagrange(trainer, monkeypatch, **view):
    """The multiplier the fine-tuning solver's first step starts from, and the solver's settings."""
    seen = {}
    from safemeta.algorithms.inner.trpolag import TRPOLag

    step = TRPOLag.step

    def spy(solver, params, batch, state, differentiable=False):
        seen.setdefault("lagrange", state["lagrange"].clone())
        seen.setdefault("lagrange_lr", solver.cfg.lagrange_lr)
        return step(solver, params, batch, state, differentiable)

    monkeypatch.setattr(TRPOLag, "step", spy)
    report = evaluate(trainer, tasks=2, adapt_steps=1, episodes=2, **view)
    monkeypatch.setattr(TRPOLag, "step", step)
    return seen, report["protocol"]


def test_common_solver_view_fine_tunes_every_row_with_the_named_solver_at_the_familys_settings(monkeypatch):
    base = {"env": "point-circle", "trainer": {"envs_per_task": 2}, "eval": {"envs_per_task": 2}}
    c_maml = MetaTrainer(safemeta.resolve_config([("t", {**base, "algo": "c_maml", "inner": "cpo"})]))
    pretrained = MetaTrainer(safemeta.resolve_config([("t", {**base, "algo": "pretrained"})]))
    c_maml.outer.lagrange = 3.0  # as if meta-training had raised the meta lambda
    pretrained.outer.state["lagrange"] = torch.tensor([2.0])
    assert c_maml.cfg.inner_cfg.get("trpolag").lagrange_lr == 0.05  # the preset's, not the family's
    rows = {}
    for name, t in (("c_maml", c_maml), ("pretrained", pretrained)):
        for mult in ("inherit", "fresh"):
            rows[name, mult] = _first_lagrange(t, monkeypatch, inner="trpolag", multipliers=mult)
    for (name, mult), (seen, protocol) in rows.items():
        assert protocol["solver"]["name"] == "trpolag" and protocol["solver"]["view"] == "common"
        assert seen["lagrange_lr"] == 0.001  # point-circle's trpolag, the same for every row
        want = {"c_maml": 3.0, "pretrained": 2.0}[name] if mult == "inherit" else 0.0
        assert seen["lagrange"].tolist() == [want, want]
        assert protocol["inherited"] == ({"lagrange": want} if mult == "inherit" else {})
    # the run's own solver (cpo, no multiplier): nothing to inherit, own settings
    own = evaluate(c_maml, tasks=1, adapt_steps=0, episodes=1)["protocol"]
    assert own["solver"] == {"name": "cpo", "view": "own", "settings": own["solver"]["settings"]}
    assert own["inherited"] == {}


def test_fresh_critics_differ_from_the_carried_initialization(make_config, monkeypatch):
    t = MetaTrainer(make_config(algo="c_maml"))
    t.train_iteration()
    starts = []
    adapt = type(t.adapter).adapt

    def spy(adapter, init, venv, steps, state, critic_params, *a, **k):
        starts.append(critic_params.cost)
        return adapt(adapter, init, venv, steps, state, critic_params, *a, **k)

    monkeypatch.setattr(type(t.adapter), "adapt", spy)
    evaluate(t, tasks=2, adapt_steps=0, episodes=1)
    evaluate(t, tasks=2, adapt_steps=0, episodes=1, critics="fresh")
    carried = t.meta.critics_for(2).cost
    assert all(torch.equal(starts[0][k], carried[k]) for k in carried)
    assert not all(torch.equal(starts[1][k], carried[k]) for k in carried)


@pytest.mark.parametrize("algo,inner", [("cpo_scratch", "cpo"), ("trpo_scratch", "trpo")])
def test_scratch_baselines_do_no_meta_training(tmp_path, algo, inner):
    cfg = safemeta.resolve_config([("t", {"algo": algo, "env": "tiny-nav", "out": str(tmp_path), "log": {"progress": False},
                                          "eval": {"tasks": 2, "adapt_steps": 1, "episodes": 2}})])
    assert cfg.inner == inner and planned_iterations(cfg) == 0 and cfg.eval.adapt_steps == 1
    fresh = MetaTrainer(cfg).meta.theta
    run = safemeta.train(cfg)
    assert run.trainer.iteration == 0 and run.trainer.counters["env_steps"] == 0
    assert all(torch.equal(run.trainer.meta.theta[k], fresh[k]) for k in fresh)
    report = json.loads((run.path / "meta_test.json").read_text())
    assert report["protocol"]["solver"]["name"] == inner and len(report["steps"]) == 2


def test_presets_state_their_papers_K():
    k = {a: safemeta.resolve_config([("t", {"algo": a, "env": "point-circle"})]).eval.adapt_steps
         for a in ("meta_cpo", "meta_trpo", "cpo_scratch", "trpo_scratch", "c_maml", "meta_srl")}
    assert k == {"meta_cpo": 5, "meta_trpo": 5, "cpo_scratch": 5, "trpo_scratch": 5, "c_maml": 10, "meta_srl": 5}


CATEGORICAL = textwrap.dedent('''
    from safemeta.registry import register_inner
    from safemeta.algorithms.inner.trpo import TRPO

    @register_inner("categorical_pg", "updates categorical actors only (eval.inner test)")
    class CategoricalPG(TRPO):
        policy_kinds = ("categorical",)
''')


def test_bad_eval_inner_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="eval.inner.*'nope' names no registered inner solver.*trpolag"):
        safemeta.resolve_config([("t", {"eval": {"inner": "nope"}})])
    r = run_cli("train", "--env", "tiny-nav", "--iters", "1", "--out", str(tmp_path), "--set", "eval.inner=nope")
    assert r.returncode == 2 and "names no registered inner solver" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("train", "--algo", "random", "--env", "tiny-nav", "--out", str(tmp_path), "--no-progress",
                "--set", "eval.tasks=1", "--set", "eval.adapt_steps=0", "--set", "eval.episodes=1")
    assert r.returncode == 0, r.stderr
    run_dir = next(tmp_path.glob("random-trpolag-tiny-nav/*"))
    r = run_cli("eval", str(run_dir), "--inner", "nope")
    assert r.returncode == 2 and "Valid: '' (the run's own)" in r.stderr and "trpolag" in r.stderr
    plugin = tmp_path / "categorical.py"
    plugin.write_text(CATEGORICAL)
    r = run_cli("eval", str(run_dir), "--plugin", str(plugin), "--inner", "categorical_pg")
    assert r.returncode == 2 and "cannot fine-tune this run's policy" in r.stderr and "Traceback" not in r.stderr
    assert "Solvers that can: " in r.stderr and "cpo" in r.stderr.split("Solvers that can: ")[1]
    r = run_cli("eval", str(run_dir), "--inner", "cpo", "--multipliers", "fresh", "--view", "common-cpo",
                "--adapt-steps", "1", "--episodes", "2", "--envs-per-task", "3")
    assert r.returncode == 0, r.stderr
    view = json.loads((run_dir / "views" / "common-cpo.json").read_text())
    assert view["view"] == "common-cpo" and view["protocol"]["solver"]["view"] == "common"
    assert view["spec"]["envs_per_task"] == 3 and view["protocol"]["adapt_batch"]["envs_per_task"] == 3
    r = run_cli("eval", str(run_dir), "--envs-per-task", "0")
    assert r.returncode == 2 and "--envs-per-task must be >= 1" in r.stderr
    r = run_cli("eval", str(run_dir), "--view", "bad name!")
    assert r.returncode == 2 and "View name" in r.stderr
