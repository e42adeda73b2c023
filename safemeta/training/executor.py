"""Where an iteration's per-task adaptation runs: in this process (``local``) or on Ray actors (``ray``).

The trainer splits the iteration's M tasks into ``trainer.shards`` contiguous shards. A shard is a
`ShardJob`: its tasks, the inner solver's initial state and the critics for them (sliced from the
iteration's), its env seed and its action-noise seed. What a shard computes depends on theta and the
job only, so the executor and the number of Ray workers never change a run's numbers, only where and how
fast they are computed; ``shards = 1`` is the unsharded path (one env batch for every task, the trainer's
own generator), bit for bit what the trainer did before executors existed.

Ray (``--executor ray``): one `ShardWorker` actor per worker holds a complete trainer (family, its envs,
actor and critic modules, inner solver, outer updater) between iterations; each iteration it receives
theta and the observation-normalization moments, adapts its shards, and returns the detached results,
its pending observation moments, and, for an outer updater whose meta-gradient needs the graph through
the inner steps (Meta-CPO), that shard's summed meta-gradient terms (`OuterUpdater.shard_terms`). The
meta update stays on the driver. A worker that dies is restarted and its unfinished shards are retried
(``trainer.ray_retries``); a shard is a pure function of its inputs, so a retry gives the same result.
"""
from __future__ import annotations

import dataclasses
import os
import uuid
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from safemeta.training.adaptation import AdaptationResult
from safemeta.rollout.batch import Batch
from safemeta.rollout.critics import CriticParams
from safemeta.errors import UserError
from safemeta.training.model import stacked_theta
from safemeta.rollout.params import Params, concat, detach, task_slice
from safemeta.rollout.task import Task


@dataclass
class ShardJob:
    tasks: list[Task]
    state: dict[str, Tensor]
    critics: CriticParams
    venv_seed: int
    gen_seed: int | None  # None: the trainer's own generator (shards = 1)
    steps: int
    final_rollout: bool
    differentiable: bool
    gen_state: Tensor | None = None  # a remote unsharded job: the trainer's generator state, to continue from


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous ``[lo, hi)`` task ranges of ``min(shards, n)`` shards, sizes differing by at most one."""
    s = min(shards, n)
    cuts = [round(i * n / s) for i in range(s + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def split_jobs(tasks: list[Task], state: dict[str, Tensor], critics: CriticParams, venv_seed: int,
               gen: torch.Generator, shards: int, steps: int, final_rollout: bool, differentiable: bool) -> list[ShardJob]:
    bounds = shard_bounds(len(tasks), shards)
    if len(bounds) == 1:
        return [ShardJob(tasks, state, critics, venv_seed, None, steps, final_rollout, differentiable)]
    gen_seeds = torch.randint(0, 2**62, (len(bounds),), generator=gen, device=gen.device).tolist()
    jobs = []
    for i, (lo, hi) in enumerate(bounds):
        part = slice(lo, hi)
        jobs.append(ShardJob(tasks[lo:hi], {k: v[part].clone() for k, v in state.items()},
                             CriticParams(task_slice(critics.reward, part), task_slice(critics.cost, part)),
                             venv_seed + i, int(gen_seeds[i]), steps, final_rollout, differentiable))
    return jobs


def run_job(trainer: Any, job: ShardJob) -> AdaptationResult:
    """Adapt theta to the job's tasks in this process (the graph to theta kept when differentiable)."""
    tr = trainer.cfg.trainer
    venv = trainer.family.make(job.tasks, tr.envs_per_task, tr.device, job.venv_seed)
    gen = trainer.gen if job.gen_seed is None else torch.Generator().manual_seed(job.gen_seed)
    theta = stacked_theta(trainer.meta, len(job.tasks), keep_graph=job.differentiable)
    return trainer.adapter.adapt(theta, venv, job.steps, job.state, job.critics, tr.episodes_per_env, gen,
                                 final_rollout=job.final_rollout, differentiable=job.differentiable)


def merge(results: list[AdaptationResult]) -> AdaptationResult:
    """The shards' results as one result over all tasks, in task order."""
    if len(results) == 1:
        return results[0]
    first = results[0]
    batches = [Batch.concat([r.batches[k] for r in results]) for k in range(len(first.batches))]
    infos, critic_infos = ([{key: torch.cat([getattr(r, name)[k][key].reshape(-1) for r in results])
                             for key in getattr(first, name)[k]} for k in range(len(getattr(first, name)))]
                           for name in ("infos", "critic_infos"))
    return AdaptationResult(
        params=[concat([r.params[k] for r in results]) for k in range(len(first.params))],
        batches=batches,
        state=concat([r.state for r in results]),
        critics=CriticParams(concat([r.critics.reward for r in results]),
                             concat([r.critics.cost for r in results])),
        infos=infos,
        critic_infos=critic_infos,
        initial_state=None if first.initial_state is None else concat([r.initial_state for r in results]),
        meta_terms=_sum_terms([r.meta_terms for r in results]))


def _sum_terms(terms: list[dict[str, Tensor] | None]) -> dict[str, Tensor] | None:
    if any(t is None for t in terms):
        return None
    return {k: sum(t[k] for t in terms) for k in terms[0]}


def detached(result: AdaptationResult) -> AdaptationResult:
    return dataclasses.replace(result, params=[detach(p) for p in result.params], state=detach(result.state),
                               infos=[detach(i) for i in result.infos])


class LocalExecutor:
    """The shards one after another in this process. With several shards, a differentiable shard's
    meta-gradient terms are computed right after it (as a Ray worker does) and its graph is dropped."""

    def run(self, trainer: Any, jobs: list[ShardJob]) -> AdaptationResult:
        if len(jobs) == 1:
            return run_job(trainer, jobs[0])
        results = []
        for job in jobs:
            result = run_job(trainer, job)
            if job.differentiable:
                result.meta_terms = trainer.outer.shard_terms(result)
                result = detached(result)
            results.append(result)
        return merge(results)

    def close(self) -> None:
        pass


class ShardWorker:
    """A Ray actor: for each executor that uses it (``key``), a trainer of that run's config, built on first
    use and kept, with its family and envs, until the executor closes. Actors are pooled per Ray session, so
    runs in one process (a grid, a test session) share worker processes."""

    def __init__(self) -> None:
        self.trainers: dict[str, Any] = {}

    def pid(self) -> int:
        return os.getpid()

    def _trainer(self, key: str, cfg: Any, plugins: list[str], trainer_cls: type) -> Any:
        if key not in self.trainers:
            from safemeta.registry import load_plugin

            for spec in plugins:
                load_plugin(spec)
            self.trainers[key] = trainer_cls(cfg)
        return self.trainers[key]

    def run(self, key: str, cfg: Any, plugins: list[str], trainer_cls: type, theta: Params, obs_norm: dict | None,
            job: ShardJob) -> tuple[AdaptationResult, tuple[int, Tensor, Tensor] | None, Tensor | None]:
        """The job's result (detached), the observation moments it collected, and the generator state
        after it (an unsharded job continues the driver's generator and hands it back)."""
        t = self._trainer(key, cfg, plugins, trainer_cls)
        with torch.no_grad():
            for k, p in t.meta.theta.items():
                p.copy_(theta[k])
        if t.obs_norm is not None:
            t.obs_norm.load_state_dict(obs_norm)
        if job.gen_state is not None:
            t.gen.set_state(job.gen_state)
        result = run_job(t, job)
        if job.differentiable:
            result.meta_terms = t.outer.shard_terms(result)
        moments = t.obs_norm.pending() if t.obs_norm is not None else None
        return detached(result), moments, t.gen.get_state() if job.gen_state is not None else None

    def forget(self, key: str) -> None:
        self.trainers.pop(key, None)


def start_local_ray(num_cpus: int) -> None:
    """A local Ray whose workers run at normal priority. Ray nices its workers to 15 by default
    (``worker_niceness``), so on a machine with any other load they starve: measured here, a busy loop ran
    13x slower in a default worker than in the driver, and Ray's 2 workers were no faster than 1. To join a
    cluster with the same setting, start its nodes with ``RAY_worker_niceness=0 ray start ...``."""
    import ray

    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 2**20,
             _system_config={"worker_niceness": 0})


_pool: dict[str, list] = {}  # Ray job id -> the ShardWorker actors started in it


class RayExecutor:
    """Shards as Ray actor tasks, round-robin over ``trainer.ray_workers`` actors (default one per shard)."""

    def __init__(self, cfg: Any):
        """Starts or joins Ray and takes ``ray_workers`` actors from this Ray session's pool (created on first
        need, with ``ray_retries`` restarts each)."""
        try:
            import ray
        except ImportError:
            raise UserError("trainer.executor=ray needs the 'ray' package (pinned in requirements/constraints.txt; "
                            "`make venv` installs it). Use trainer.executor=local otherwise.") from None
        tr = cfg.trainer
        self.ray = ray
        if not ray.is_initialized():
            try:
                if tr.ray_address:
                    ray.init(address=tr.ray_address, include_dashboard=False, log_to_driver=False)
                else:
                    start_local_ray(os.cpu_count() or 1)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise UserError(f"Cannot start or join Ray (trainer.ray_address='{tr.ray_address}'): {e}") from None
        pool = _pool.setdefault(ray.get_runtime_context().get_job_id(), [])
        actor = ray.remote(max_restarts=tr.ray_retries, max_task_retries=tr.ray_retries,
                           scheduling_strategy="SPREAD")(ShardWorker)  # spread over a cluster's nodes
        while len(pool) < (tr.ray_workers or tr.shards):
            pool.append(actor.remote())
        self.workers = pool[: tr.ray_workers or tr.shards]
        self.cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(tr, executor="local"))
        self.key = uuid.uuid4().hex

    def run(self, trainer: Any, jobs: list[ShardJob]) -> AdaptationResult:
        from safemeta.registry import loaded_plugins

        theta = {k: v.detach().clone() for k, v in trainer.meta.theta.items()}
        norm = trainer.obs_norm.state_dict() if trainer.obs_norm is not None else None
        for job in jobs:
            if job.gen_seed is None:
                job.gen_state = trainer.gen.get_state()
        refs = [self.workers[i % len(self.workers)].run.remote(self.key, self.cfg, list(loaded_plugins), type(trainer),
                                                               theta, norm, job)
                for i, job in enumerate(jobs)]
        try:
            outs = self.ray.get(refs)
        except self.ray.exceptions.RayError as e:
            raise RuntimeError(f"A Ray shard failed after {trainer.cfg.trainer.ray_retries} retries: {e}") from e
        for _, moments, gen_state in outs:
            if moments is not None:
                trainer.obs_norm.add_pending(*moments)
            if gen_state is not None:
                trainer.gen.set_state(gen_state)
        return merge([r for r, _, _ in outs])

    def close(self) -> None:
        """Drop this run's trainers from the actors (they stay up for the next run in this process)."""
        for w in self.workers:
            w.forget.remote(self.key)
        self.workers = []


def make_executor(cfg: Any) -> LocalExecutor | RayExecutor:
    return RayExecutor(cfg) if cfg.trainer.executor == "ray" else LocalExecutor()
