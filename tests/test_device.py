"""``trainer.device``: every tensor a run creates is created on an explicit device, so a run can live on a GPU.

On any machine: every preset meta-trains an iteration and meta-tests with torch's *default* device set to
``meta`` (tensors without data). A tensor created without an explicit device then lands on ``meta`` and the
first operation that mixes it with the run's CPU tensors, or reads its value, fails: the test finds what a CUDA
run would trip over (a CPU tensor meeting CUDA ones) without a GPU. With a GPU, every preset also runs on
``cuda`` (skipped here: no GPU on the machines this was written on).
"""
import math

import pytest
import torch

import safemeta
from safemeta import registry
from safemeta.evaluation.meta_test import evaluate
from safemeta.training.trainer import MetaTrainer



def _algos() -> list[str]:
    import safemeta.presets  # noqa: F401  (registers the built-in presets)
    return registry.algo.names()


def _small(algo: str, device: str = "cpu"):
    """The preset at a small size, on its own family, with minibatches smaller than the batch (so the critics'
    and PPO-style solvers' shuffles run)."""
    family = safemeta.resolve_config([("t", {"algo": algo, "log": {"progress": False}})]).env
    return safemeta.resolve_config([("t", {
        "algo": algo, "log": {"progress": False},
        "trainer": {"tasks_per_iter": 2, "envs_per_task": 2, "device": device},
        "critic": {"minibatch_size": 16, "max_minibatches": 4, "meta_max_minibatches": 4},
        "inner_cfg": {name: {"minibatch_size": 16} for name in ("ppo", "ppolag", "pidlag", "p3o", "focops")},
        "env_cfg": {family: {"horizon": 30}}})])


def _iterate_and_meta_test(cfg) -> dict:
    trainer = MetaTrainer(cfg)
    metrics = trainer.train_iteration()
    report = evaluate(trainer, tasks=2, adapt_steps=1, seed=0)
    return {"metrics": metrics, "report": report, "trainer": trainer}


@pytest.mark.parametrize("algo", _algos())
def test_every_preset_creates_its_tensors_on_an_explicit_device(algo):
    cfg = _small(algo)
    torch.set_default_device("meta")
    try:
        out = _iterate_and_meta_test(cfg)
    finally:
        torch.set_default_device(None)
    assert all(v.device.type == "cpu" for v in out["trainer"].meta.theta.values())
    assert out["report"]["tasks"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("algo", _algos())
def test_every_preset_runs_on_cuda(algo):
    out = _iterate_and_meta_test(_small(algo, "cuda"))
    trainer = out["trainer"]
    assert all(v.device.type == "cuda" for v in trainer.meta.theta.values())
    assert all(v.device.type == "cuda" for v in trainer.meta.critic_cost.values())
    assert all(math.isfinite(v) for v in out["metrics"].values() if isinstance(v, float))
