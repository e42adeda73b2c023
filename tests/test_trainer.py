"""The trainer end to end: run directory contents, reproducibility, SIGKILL + resume, presets, Run.load."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import safemeta
from safemeta.training.checkpoint import Checkpointer
from tests.conftest import REPO


def _metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]


def test_train_leaves_complete_run_directory(make_config):
    cfg = make_config()
    run = safemeta.train(cfg)
    d = run.path
    assert d.parent.name == "fomaml_trpo-trpo-tiny-nav" and d.name.endswith("-s0")
    assert {"config.yaml", "metrics.csv", "metrics.jsonl", "meta_test.json", "checkpoints"} <= {p.name for p in d.iterdir()}
    assert [p.name for p in Checkpointer(d).paths()] == ["ckpt-000002.pt", "ckpt-000004.pt"]
    rows = _metrics(d)
    assert [r["iter"] for r in rows] == [1, 2, 3, 4]
    assert "eval/return_K" in rows[1] and "eval/return_K" not in rows[0]
    report = json.loads((d / "meta_test.json").read_text())
    assert len(report["steps"]) == cfg.eval.adapt_steps + 1 and report["split"] == "test"
    assert safemeta.load_config(d / "config.yaml") == cfg  # the saved config round-trips
    header = (d / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "train/return_K" in header and "env_steps" in header


def test_runs_are_never_overwritten(make_config):
    cfg = make_config(trainer={"iters": 1})
    a, b = safemeta.train(cfg), safemeta.train(cfg)
    assert a.path != b.path and a.path.parent == b.path.parent
    assert (a.path / "metrics.jsonl").exists() and (b.path / "metrics.jsonl").exists()


def test_same_seed_same_metrics_and_other_seed_differs(make_config):
    a = _metrics(safemeta.train(make_config()).path)
    b = _metrics(safemeta.train(make_config()).path)
    c = _metrics(safemeta.train(make_config(seed=3)).path)
    assert a == b
    assert a != c


def test_meta_training_changes_theta_and_load_restores_it(make_config):
    run = safemeta.train(make_config())
    loaded = safemeta.Run.load(run.path)
    for k, v in run.trainer.meta.theta.items():
        torch.testing.assert_close(loaded.trainer.meta.theta[k], v.detach())
    fresh = safemeta.Run.load(run.path).trainer.__class__(run.config)  # same seed, untrained
    assert any(not torch.equal(fresh.meta.theta[k], v.detach()) for k, v in run.trainer.meta.theta.items())
    task = loaded.trainer.family.sample(1, "test", np.random.default_rng(0))[0]
    obs = torch.zeros(5, loaded.trainer.obs_dim)
    assert loaded.policy()(obs).shape == (5, 2)
    adapted = loaded.policy(task, adapt_steps=1)(obs)
    assert adapted.shape == (5, 2) and not torch.equal(adapted, loaded.policy()(obs))


def test_random_and_pretrained_presets(make_config):
    rnd = safemeta.train(make_config(algo="random"))
    assert rnd.trainer.iteration == 0 and (rnd.path / "meta_test.json").exists()
    assert Checkpointer(rnd.path).paths()  # loadable for `safemeta eval`
    pre = safemeta.train(make_config(algo="pretrained"))
    assert pre.config.outer == "pooled" and pre.trainer.iteration == 4
    theta0 = safemeta.train(make_config(algo="pretrained", trainer={"iters": 0})).trainer.meta.theta
    assert any(not torch.equal(theta0[k], v.detach()) for k, v in pre.trainer.meta.theta.items())


def test_sigkill_mid_training_then_resume_matches_uninterrupted_run(tmp_path):
    args = ["train", "--env", "tiny-nav", "--iters", "30", "--set", "trainer.checkpoint_every=3", "--set", "trainer.eval_every=10",
            "--set", "trainer.tasks_per_iter=2", "--set", "trainer.envs_per_task=4", "--set", "critic.epochs=5",
            "--set", "eval.tasks=2", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = [sys.executable, "-m", "safemeta.cli"]
    ref = subprocess.run([*cli, *args, "--out", str(tmp_path / "ref")], env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    proc = subprocess.Popen([*cli, *args, "--out", str(tmp_path / "killed")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    run_dir = None
    while time.time() < deadline:
        found = list((tmp_path / "killed").glob("*/*/checkpoints/ckpt-000006.pt"))
        if found:
            run_dir = found[0].parents[1]
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert run_dir is not None, "the run never reached its second checkpoint"
    done = len(_metrics(run_dir))
    assert done < 30, "the run finished before it was killed: nothing was tested"
    res = subprocess.run([*cli, "train", "--resume", str(run_dir)], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    ref_dir = next((tmp_path / "ref").glob("*/*"))
    assert _metrics(run_dir) == _metrics(ref_dir)
    a = json.loads((run_dir / "meta_test.json").read_text())
    b = json.loads((ref_dir / "meta_test.json").read_text())
    assert a == b


def test_corrupt_latest_checkpoint_falls_back_to_previous(make_config):
    run = safemeta.train(make_config())
    latest = Checkpointer(run.path).paths()[-1]
    latest.write_bytes(latest.read_bytes()[:100])  # truncated
    import warnings
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        state, path = Checkpointer(run.path).load_latest()
    assert path.name == "ckpt-000002.pt" and state["iteration"] == 2
    assert any("cannot be read" in str(x.message) for x in w)
