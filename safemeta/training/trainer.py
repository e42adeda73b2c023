"""`MetaTrainer`: the one meta-training loop for every method.

    for it in 1..iters:
        tasks  = family.sample(M, "train")                         (fresh every iteration)
        venv   = family.make(tasks, envs_per_task)                 (all tasks batched)
        result = adapter.adapt(theta, venv, K, inner state from outer.inner_overrides,
                               critics from outer.initial_critics, differentiable=outer.needs_differentiable)
        the critics' initialization fitted on batch 0 (the meta-policy's rollouts), for every method
        metrics = outer.update(result, tasks)                      (the meta step)
        a non-finite theta, critic or metric after it: the update is undone and logged (skipped_update)
        (the run's driver, `safemeta.api`: every eval_every a meta-test on held-out tasks, `safemeta.evaluation`;
         log; every checkpoint_every a checkpoint)

What a method needs is declared by its outer updater (``algorithms/outer/base.py``), so Meta-CPO
(differentiable inner steps), C-MAML (meta-policy rollouts = batch 0, global cost critic via
``initial_critics``) and Meta-SRL (one task per iteration, per-task step size via
``inner_overrides``) run through this loop without special cases.

Where the adaptation runs is the executor's business (``safemeta/training/executor.py``: local, or Ray actors
with ``trainer.executor=ray``); the iteration's tasks are split into ``trainer.shards`` shards.
"""
from __future__ import annotations

import copy
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from safemeta import registry
from safemeta.training.adaptation import Adapter, AdaptationResult
from safemeta.algorithms.outer.base import OuterContext, OuterUpdater
from safemeta.training.checkpoint import Checkpointer, nonfinite_entries
from safemeta.rollout.collector import Collector
from safemeta.config.schema import Config
from safemeta.errors import UserError
from safemeta.training.executor import make_executor, split_jobs
from safemeta.training.model import MetaParams, build_modules, fit_meta_critics, init_meta_params, stacked_theta
from safemeta.rollout.obs_norm import RunningObsNorm


def planned_iterations(cfg: Config) -> int:
    """Meta-iterations a run of ``cfg`` performs: 0 for an outer updater that does no meta-training
    (``needs_rollouts`` false, e.g. the ``random`` preset), else ``trainer.iters``."""
    return cfg.trainer.iters if registry.outer.get(cfg.outer).needs_rollouts else 0


def check_device(device: str) -> None:
    """Refuse a ``trainer.device`` this machine cannot run on, naming the valid choices (a clear error instead of a
    failure deep in a rollout): ``cpu``, or ``cuda`` / ``cuda:N`` where torch sees that GPU.

    Every tensor the trainer creates is created on an explicit device (tests/test_device.py runs every preset with
    the default device set to ``meta``, so an implicit one fails). The GPU tests skip on machines without CUDA,
    and no GPU was lent to the session that wrote this, so CUDA runs have not been checked on a GPU yet."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"trainer.device '{device}' is not a device; valid: cpu, cuda, cuda:N.") from None
    if dev.type == "cpu":
        return
    if dev.type != "cuda":
        raise UserError(f"trainer.device '{device}': the trainer runs on cpu or cuda, not {dev.type}; valid: cpu, "
                        "cuda, cuda:N.")
    if not torch.cuda.is_available():
        raise UserError(f"trainer.device '{device}': torch sees no CUDA device on this machine "
                        "(torch.cuda.is_available() is false); valid here: cpu.")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"trainer.device '{device}': this machine has {torch.cuda.device_count()} CUDA device(s); "
                        f"valid: cpu, cuda, cuda:0 .. cuda:{torch.cuda.device_count() - 1}.")


class MetaTrainer:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        check_device(cfg.trainer.device)
        torch.set_num_threads(cfg.trainer.num_threads)
        torch.manual_seed(cfg.seed)
        self.family = registry.env.get(cfg.env)(cfg.env_params)
        probe = self.family.make(self.family.sample(1, "train", np.random.default_rng(0)), 1, cfg.trainer.device)
        self.obs_dim, self.act_dim = probe.obs_dim, probe.act_dim
        self.actor, self.critics = build_modules(cfg, self.obs_dim, self.act_dim)
        self.meta: MetaParams = init_meta_params(self.actor, self.critics, self.obs_dim, cfg)
        self.inner = registry.inner.get(cfg.inner)(cfg.inner_params, self.actor)
        self.inner.device = torch.device(cfg.trainer.device)
        pc = cfg.policy
        self.obs_norm = RunningObsNorm(self.obs_dim, pc.obs_clip, device=cfg.trainer.device) if pc.obs_normalize else None
        collector = Collector(self.actor, self.obs_norm, compiled=cfg.trainer.compile_collection)
        self.adapter = Adapter(collector, self.critics, self.inner)
        outer_cls: type[OuterUpdater] = registry.outer.get(cfg.outer)
        self.outer = outer_cls(cfg.outer_params, OuterContext(self.inner, self.critics, self.meta, cfg, self.family))
        self.np_rng = np.random.default_rng(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.iteration = 0
        self.counters = {"env_steps": 0, "train_cost_paid": 0.0, "wall_time": 0.0, "skipped_updates": 0}
        tr = cfg.trainer
        if (outer_cls.needs_differentiable and (tr.shards > 1 or tr.executor != "local")
                and outer_cls.shard_terms is OuterUpdater.shard_terms):
            raise UserError(f"outer updater '{cfg.outer}' differentiates through the inner steps but has no "
                            "shard_terms, so it cannot run sharded: use trainer.shards=1 and trainer.executor=local.")
        self.executor = make_executor(cfg)

    def close(self) -> None:
        """Stop the executor's workers (Ray actors); the trainer can still meta-test afterwards."""
        self.executor.close()

    # -- one meta-iteration ---------------------------------------------------------------------
    def train_iteration(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        tr = self.cfg.trainer
        outer = self.outer
        metrics: dict[str, Any] = {}
        if outer.needs_rollouts:
            tasks = self.family.sample(tr.tasks_per_iter, "train", self.np_rng)
            seed = int(self.np_rng.integers(2**31))
            n = len(tasks)
            state = self.inner.init_state(n, self.family.cost_limit_for("train"), **outer.inner_overrides(tasks))
            jobs = split_jobs(tasks, state, outer.initial_critics(n), seed, self.gen, tr.shards,
                              tr.adapt_steps if outer.adapt else 0, outer.needs_post_rollout or not outer.adapt,
                              outer.needs_differentiable)
            result: AdaptationResult = self.executor.run(self, jobs)
            metrics.update(self._guarded_update(result, tasks))
            first, last = result.batches[0], result.batches[-1]
            metrics.update({"train/return_0": float(first.ep_return.mean()), "train/cost_0": float(first.ep_cost.mean()),
                            "train/return_K": float(last.ep_return.mean()), "train/cost_K": float(last.ep_cost.mean())})
            for key, value in (result.infos[-1] if result.infos else {}).items():
                metrics[f"inner/{key}"] = float(value.float().mean())
            for key in ("ev_reward", "ev_cost"):  # every fit of the adaptation, all tasks
                metrics[f"critic/{key}"] = float(torch.stack([c[key] for c in result.critic_infos]).mean())
            self.counters["env_steps"] += result.env_steps
            self.counters["train_cost_paid"] += result.episode_cost_paid()
        if self.obs_norm is not None:  # this iteration's observations join the normalization from now on
            self.obs_norm.commit()
        self.iteration += 1
        self.counters["wall_time"] += time.perf_counter() - t0
        return {"iter": self.iteration, **self.counters, **metrics}

    def _guarded_update(self, result: AdaptationResult, tasks: list) -> dict[str, Any]:
        """The outer update, undone when it leaves a non-finite value in theta, the meta critics or its
        metrics (a NaN / Inf gradient, step or loss): the iteration then counts as a skipped update, and
        nothing non-finite ever reaches theta or a checkpoint."""
        before = (copy.deepcopy(self.meta.state_dict()), copy.deepcopy(self.outer.state_dict()))
        result.meta_batch = fit_meta_critics(self.meta, self.critics, result.batches[0])
        metrics = {f"critic/meta_{k}": float(v.mean()) for k, v in self.critics.last_fit.items()}
        metrics.update(self.outer.update(result, tasks))
        meta = self.meta
        bad = nonfinite_entries({"theta": meta.theta, "critic_reward": meta.critic_reward,
                                 "critic_cost": meta.critic_cost})
        bad += [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
        if not bad:
            return {**metrics, "skipped_update": 0.0}
        self._restore(*before)
        self.counters["skipped_updates"] += 1
        warnings.warn(f"iteration {self.iteration + 1}: the outer update produced non-finite {', '.join(bad)}; "
                      "it was undone (theta and the outer state are as before this update).", stacklevel=2)
        return {**{k: v for k, v in metrics.items() if k not in bad}, "skipped_update": 1.0}

    def _restore(self, meta_state: dict, outer_state: dict) -> None:
        loaded = MetaParams.from_state_dict(meta_state)
        with torch.no_grad():  # the same leaf tensors: the outer optimizer holds references to them
            for k, p in self.meta.theta.items():
                p.copy_(loaded.theta[k])
        device = self.cfg.trainer.device  # checkpoints load on the CPU
        self.meta.critic_reward = {k: v.to(device) for k, v in loaded.critic_reward.items()}
        self.meta.critic_cost = {k: v.to(device) for k, v in loaded.critic_cost.items()}
        self.outer.load_state_dict(outer_state)

    # -- checkpoint state ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "meta": self.meta.state_dict(), "outer": self.outer.state_dict(),
                "counters": dict(self.counters), "np_rng": self.np_rng.bit_generator.state,
                "torch_gen": self.gen.get_state(), "torch_global": torch.get_rng_state(),
                "obs_norm": self.obs_norm.state_dict() if self.obs_norm is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.iteration = state["iteration"]
        self._restore(state["meta"], state["outer"])
        self.counters = {**self.counters, **state["counters"]}
        self.np_rng.bit_generator.state = state["np_rng"]
        self.gen.set_state(state["torch_gen"])
        torch.set_rng_state(state["torch_global"])
        if self.obs_norm is not None and state.get("obs_norm") is not None:
            self.obs_norm.load_state_dict(state["obs_norm"])

    def load_checkpoint(self, run_dir: Path) -> Path:
        state, path = Checkpointer(run_dir).load_latest()
        self.load_state_dict(state)
        return path

    def act(self, obs: torch.Tensor, params: dict | None = None, deterministic: bool = True) -> torch.Tensor:
        """Actions of the meta-policy (or of given unstacked params) for observations ``[..., obs_dim]``."""
        p = params if params is not None else {k: v.detach() for k, v in self.meta.theta.items()}
        if self.obs_norm is not None:
            obs = self.obs_norm(obs)
        with torch.no_grad():
            mean, log_std = torch.func.functional_call(self.actor, p, (obs,))
            return mean if deterministic else mean + log_std.exp() * torch.randn_like(mean)

    def adapted_params(self, task, steps: int, seed: int = 0) -> dict:
        """theta adapted to one task by ``steps`` inner steps (unstacked): the inner solver's ``output``."""
        tr = self.cfg.trainer
        venv = self.family.make([task], tr.envs_per_task, tr.device, seed)
        state = self.inner.init_state(1, self.family.cost_limit_for(task.split), **self.outer.inner_overrides([task]))
        result = self.adapter.adapt(stacked_theta(self.meta, 1), venv, steps, state, self.outer.initial_critics(1),
                                    tr.episodes_per_env, torch.Generator().manual_seed(seed), final_rollout=False)
        if self.obs_norm is not None:
            self.obs_norm.discard()
        return {k: v[0].detach() for k, v in self.inner.output(result).items()}
