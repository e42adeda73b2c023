"""Faults a long run meets (issue 9): a NaN / Inf step or update is skipped, logged and never checkpointed;
a crash in the middle of a checkpoint write resumes from the previous one with the uninterrupted run's
numbers; a full disk or an unwritable run directory fails early with the path in the message; NaN at the
VecCMDP boundary is caught and named; out-of-bound actions are clipped by every built-in family."""
import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

import safemeta
from safemeta import registry
from safemeta.training.adaptation import finite_step
from safemeta.training.checkpoint import Checkpointer
from safemeta.cli import main
from safemeta.errors import UserError
from safemeta.registry import load_plugin
from safemeta.rollout.vec_cmdp import EnvFault, checked_step
from tests.conftest import REPO

NAN_OUTER = textwrap.dedent('''
    import torch
    from safemeta.registry import register_outer
    from safemeta.algorithms.outer.fomaml import FOMAML

    @register_outer("nan_fomaml", "FOMAML whose second update writes NaN into theta (fault test)")
    class NanFOMAML(FOMAML):
        calls = 0

        def update(self, result, tasks):
            metrics = super().update(result, tasks)
            type(self).calls += 1
            if type(self).calls == 2:
                with torch.no_grad():
                    next(iter(self.ctx.meta.theta.values())).fill_(float("nan"))
            return metrics
''')


class _StubInner:
    """An inner solver whose step sends task 1's parameters and state to NaN."""

    def step(self, params, batch, state, differentiable=False):
        new = {k: v + 1.0 for k, v in params.items()}
        new["w"][1] = float("nan")
        new_state = {"lagrange": state["lagrange"] + 1.0}
        new_state["lagrange"][1] = float("inf")
        return new, new_state, {"kl": torch.zeros(3)}


class _FakeBatch:
    n_tasks = 3


def test_nonfinite_inner_step_is_undone_for_that_task_only():
    params = {"w": torch.zeros(3, 2)}
    state = {"lagrange": torch.zeros(3)}
    new, new_state, info = finite_step(_StubInner(), params, _FakeBatch(), state, False)
    assert torch.equal(new["w"], torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]))
    assert torch.equal(new_state["lagrange"], torch.tensor([1.0, 0.0, 1.0]))
    assert torch.equal(info["nonfinite_step"], torch.tensor([0.0, 1.0, 0.0]))


def test_nan_meta_update_is_skipped_logged_and_never_checkpointed(make_config, tmp_path):
    plugin = tmp_path / "nan_outer.py"
    plugin.write_text(NAN_OUTER)
    load_plugin(str(plugin))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = safemeta.train(make_config(outer="nan_fomaml", trainer={"checkpoint_every": 1}))
    rows = [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_update"] for r in rows] == [0.0, 1.0, 0.0, 0.0]
    assert rows[-1]["skipped_updates"] == 1
    assert any("non-finite theta" in str(w.message) for w in caught)
    for path in Checkpointer(run.path).paths():
        state = torch.load(path, weights_only=False)
        assert all(bool(torch.isfinite(v).all()) for v in state["meta"]["theta"].values()), path
    assert all(bool(torch.isfinite(v).all()) for v in run.trainer.meta.theta.values())


def test_checkpointer_refuses_nonfinite_state_and_reports_a_failed_write(tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path)
    good = {"iteration": 1, "meta": {"theta": {"w": torch.ones(2)}}}
    assert ckpt.save(good, 1) is not None
    with pytest.warns(UserWarning, match="meta.theta.w"):
        assert ckpt.save({"iteration": 2, "meta": {"theta": {"w": torch.tensor([1.0, float("nan")])}}}, 2) is None

    def disk_full(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("safemeta.training.checkpoint.torch.save", disk_full)
    with pytest.raises(UserError, match="No space left on device.*ckpt-000001.pt.*is intact.*--resume"):
        ckpt.save(good, 3)
    assert [p.name for p in ckpt.paths()] == ["ckpt-000001.pt"]
    assert not list((tmp_path / "checkpoints").glob(".*tmp"))  # no half-written file left behind


def test_full_disk_and_unwritable_out_fail_before_training(tmp_path, monkeypatch, capsys):
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr("safemeta.training.run_dir.shutil.disk_usage",
                        lambda p: real(p)._replace(free=1000))
    args = ["train", "--env", "tiny-nav", "--iters", "1", "--no-progress", "--out", str(tmp_path / "runs")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Not enough disk space" in err and str(tmp_path / "runs") in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing created
    monkeypatch.undo()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert main(["train", "--env", "tiny-nav", "--iters", "1", "--no-progress", "--out", str(blocker / "runs")]) == 2
    err = capsys.readouterr().err
    assert "Cannot create the run directory" in err and str(blocker) in err


CRASH_IN_CHECKPOINT = textwrap.dedent('''
    import os, sys
    import torch
    import safemeta
    from safemeta.training import checkpoint

    real_save = torch.save
    def crashing_save(state, f):
        if state["iteration"] == 4:  # die with half of checkpoint 4 on disk
            real_save(state, f)
            f.truncate(f.tell() // 2)
            f.flush()
            os._exit(9)
        real_save(state, f)
    checkpoint.torch.save = crashing_save
    sys.exit(safemeta.cli.main(sys.argv[1:]))
''')


def test_crash_during_a_checkpoint_write_resumes_from_the_previous_one(tmp_path):
    args = ["train", "--env", "tiny-nav", "--iters", "6", "--set", "trainer.checkpoint_every=2",
            "--set", "trainer.eval_every=0", "--set", "trainer.tasks_per_iter=2", "--set", "trainer.envs_per_task=4",
            "--set", "critic.epochs=5", "--set", "eval.tasks=2", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = tmp_path / "crash.py"
    script.write_text("import safemeta.cli\n" + CRASH_IN_CHECKPOINT)
    ref = subprocess.run([sys.executable, "-m", "safemeta.cli", *args, "--out", str(tmp_path / "ref")], env=env,
                         capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    crashed = subprocess.run([sys.executable, str(script), *args, "--out", str(tmp_path / "crash")], env=env,
                             capture_output=True, text=True)
    assert crashed.returncode == 9, crashed.stderr
    run_dir = next((tmp_path / "crash").glob("*/*"))
    assert [p.name for p in Checkpointer(run_dir).paths()] == ["ckpt-000002.pt"]  # 4 never landed
    res = subprocess.run([sys.executable, "-m", "safemeta.cli", "train", "--resume", str(run_dir)], env=env,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "iteration 2" in res.stderr  # lost at most one checkpoint interval
    ref_dir = next((tmp_path / "ref").glob("*/*"))

    def metrics(d):
        return [{k: v for k, v in json.loads(x).items() if k != "wall_time"}
                for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert metrics(run_dir) == metrics(ref_dir)


def test_nan_at_the_vec_cmdp_boundary_is_named(make_config):
    from safemeta.training.trainer import MetaTrainer

    trainer = MetaTrainer(make_config())
    venv = trainer.family.make(trainer.family.sample(3, "train", np.random.default_rng(0)), 2, "cpu", 0)
    venv.reset(0)
    act = torch.zeros(6, venv.act_dim)
    act[3, 0] = float("nan")
    with pytest.raises(EnvFault, match=r"non-finite action for task\(s\) \[1\]"):
        checked_step(venv, act)

    real_step = venv.step

    def broken_step(a):
        obs, rew, cost, term, trunc, info = real_step(a)
        cost = cost.clone()
        cost[5] = float("inf")
        return obs, rew, cost, term, trunc, info
    venv.step = broken_step
    with pytest.raises(EnvFault, match=r"non-finite cost for task\(s\) \[2\]"):
        checked_step(venv, torch.zeros(6, venv.act_dim))


@pytest.mark.parametrize("family", ["tiny-nav", "nav2d-hazard", "point-goal", "point-goal-level1", "point-circle", "point-button",
                                    "car-circle-hazard"])
def test_out_of_bound_actions_are_clipped_by_every_family(family):
    cls = registry.env.get(family)
    fam = cls(cls.Config())
    tasks = fam.sample(2, "train", np.random.default_rng(0))
    a, b = fam.make(tasks, 3, "cpu", 0), fam.make(tasks, 3, "cpu", 0)
    oa, ob = a.reset(1), b.reset(1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        act = torch.randn(6, a.act_dim, generator=gen) * 1e6
        oa, ra, ca, *_ = a.step(act)
        ob, rb, cb, *_ = b.step(act.clamp(-1, 1))
        assert torch.isfinite(oa).all()
        assert torch.equal(oa, ob) and torch.equal(ra, rb) and torch.equal(ca, cb)
