"""Executors (issue 9): a run's numbers depend on its shards, never on where they run. The Ray executor
(a local Ray, 1 or 2 workers) gives exactly the local executor's metrics, Meta-CPO's shard meta-gradients
included; a worker killed in the middle of a shard is restarted, the shard retried, the iteration
completes with the same numbers."""
import textwrap

import numpy as np
import pytest
import torch

import safemeta
from safemeta.training.executor import merge, shard_bounds, start_local_ray
from safemeta.registry import load_plugin
from safemeta.training.trainer import MetaTrainer

ray = pytest.importorskip("ray")

DYING = textwrap.dedent('''
    import os
    from pathlib import Path
    from safemeta.registry import register_inner
    from safemeta.algorithms.inner.trpo import TRPO

    MARKER = Path({marker!r})

    @register_inner("dying_trpo", "TRPO whose process dies in its first step while MARKER exists (fault test)")
    class Dying(TRPO):
        def step(self, *args, **kwargs):
            if MARKER.exists():
                MARKER.unlink()
                os.kill(os.getpid(), 9)
            return super().step(*args, **kwargs)
''')


@pytest.fixture(scope="module")
def local_ray():
    start_local_ray(2)
    yield
    ray.shutdown()


def _layers(algo="fomaml_trpo", **trainer):
    layers = {"algo": algo, "env": "tiny-nav", "seed": 3, "log": {"progress": False}, "critic": {"epochs": 2},
              "policy": {"obs_normalize": True}, "eval": {"tasks": 2, "adapt_steps": 1},
              "trainer": {"iters": 2, "tasks_per_iter": 2, "envs_per_task": 2, "eval_every": 0, **trainer}}
    if algo == "meta_cpo":
        layers.pop("policy")
    return layers


def _cfg(algo="fomaml_trpo", **trainer):
    return safemeta.resolve_config([("test", _layers(algo, **trainer))])


def _rows(cfg, iters=2):
    trainer = MetaTrainer(cfg)
    try:
        rows = [trainer.train_iteration() for _ in range(iters)]
    finally:
        trainer.close()
    for r in rows:
        r.pop("wall_time")
    theta = {k: v.detach().clone() for k, v in trainer.meta.theta.items()}
    return rows, theta


def _same(a, b):
    (rows_a, theta_a), (rows_b, theta_b) = a, b
    assert rows_a == rows_b
    for k in theta_a:
        assert torch.equal(theta_a[k], theta_b[k]), k


def test_shard_bounds_cover_the_tasks_evenly():
    for n in range(1, 12):
        for s in range(1, 6):
            b = shard_bounds(n, s)
            assert b[0][0] == 0 and b[-1][1] == n and len(b) == min(n, s)
            assert all(hi > lo for lo, hi in b) and all(b[i][1] == b[i + 1][0] for i in range(len(b) - 1))
            assert max(hi - lo for lo, hi in b) - min(hi - lo for lo, hi in b) <= 1


def test_sharding_changes_streams_but_merge_keeps_task_order():
    cfg = _cfg(shards=2)
    trainer = MetaTrainer(cfg)
    from safemeta.training.executor import run_job, split_jobs

    tasks = trainer.family.sample(4, "train", np.random.default_rng(0))
    state = trainer.inner.init_state(4, 1.0)
    jobs = split_jobs(tasks, state, trainer.outer.initial_critics(4), 7, trainer.gen, 2, 1, True, False)
    assert [len(j.tasks) for j in jobs] == [2, 2] and jobs[0].gen_seed != jobs[1].gen_seed
    parts = [run_job(trainer, j) for j in jobs]
    merged = merge(parts)
    assert merged.batches[0].obs.shape[0] == 4
    assert torch.equal(merged.batches[1].ep_return[2:], parts[1].batches[1].ep_return)
    assert torch.equal(merged.params[1]["log_std"][:2], parts[0].params[1]["log_std"])


def test_ray_executor_equals_local_for_any_worker_count(local_ray):
    local = _rows(_cfg(shards=2))
    _same(local, _rows(_cfg(shards=2, executor="ray", ray_workers=1)))
    _same(local, _rows(_cfg(shards=2, executor="ray", ray_workers=2)))
    _same(_rows(_cfg()), _rows(_cfg(executor="ray")))  # one shard: the driver's generator travels and returns


def test_ray_meta_cpo_shard_meta_gradients_equal_local(local_ray):
    local = _rows(_cfg("meta_cpo", shards=2), iters=1)
    remote = _rows(_cfg("meta_cpo", shards=2, executor="ray"), iters=1)
    _same(local, remote)
    assert local[0][0]["meta_grad_norm"] > 0


def test_killed_worker_is_restarted_and_the_iteration_completes(local_ray, tmp_path):
    marker = tmp_path / "kill-once"
    plugin = tmp_path / "dying.py"
    plugin.write_text(DYING.format(marker=str(marker)))
    load_plugin(str(plugin))
    expected = _rows(safemeta.resolve_config([("test", {**_layers(shards=2), "inner": "dying_trpo"})]))
    marker.write_text("kill the worker that reads this")
    got = _rows(safemeta.resolve_config([("test", {**_layers(shards=2, executor="ray", ray_workers=2),
                                                    "inner": "dying_trpo"})]))
    assert not marker.exists()  # a worker did die in its first inner step
    _same(expected, got)
