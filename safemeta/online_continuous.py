"""Meta-SRL's online protocol on a continuous (neural-policy) family, with *estimated* TAOG / TACV.

    tasks 1..T ~ family (train split);  references: CRPO for ``reference_steps`` steps from a fresh init
    on all T tasks at once (batched), J_ref_t = the best return among its iterates whose cost is <= d
    for t = 1..T:  theta_t, alpha_t from the learner;  M CRPO steps on task t;  pi_hat_t's rollout gives
                   J_hat_t and C_hat_t;  gap_t = J_ref_t - J_hat_t,  viol_t = max(0, C_hat_t - d)

Returns and costs are undiscounted episode means of rollouts (the trainer's own statistics), so the gap
is an estimate against a long-trained reference, not the exact LP gap of the tabular protocol
(`safemeta.online`). Learners: ``meta_srl`` (the `online_dualdice` outer updater of preset meta_srl,
learning theta and alpha), ``random`` (a fresh init per task), ``pretrained`` (preset pretrained with
CRPO, trained for ``pretrain_iters`` meta-iterations before the sequence), ``fal`` (follow the average
leader: theta_t = the mean of the past tasks' adapted parameters). The baselines use CRPO's step size
``alpha0``; meta_srl starts from it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from safemeta.config.schema import spec

CONTINUOUS_LEARNERS = ("meta_srl", "random", "pretrained", "fal")


@dataclass
class ContinuousOnlineConfig:
    learner: Literal["meta_srl", "random", "pretrained", "fal"] = "meta_srl"
    learner_cfg: dict[str, Any] = field(default_factory=dict)  # outer_cfg.online_dualdice of meta_srl
    env: str = "nav2d-hazard"
    env_cfg: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    tasks: int = spec(20, ge=1, doc="T")
    steps: int = spec(5, ge=1, doc="M, CRPO steps per task")
    alpha0: float = spec(0.5, gt=0, doc="CRPO step size of the baselines and meta_srl's alpha_1")
    envs_per_task: int = spec(10, ge=1, doc="envs per rollout (one episode each)")
    reference_steps: int = spec(60, ge=1, doc="CRPO steps of the per-task reference")
    pretrain_iters: int = spec(20, ge=1, doc="meta-iterations of the pretrained baseline")


def _trainer(cfg: ContinuousOnlineConfig, algo: str, iters: int = 1):
    from safemeta.config.loader import resolve_config
    from safemeta.trainer import MetaTrainer

    layer = {"algo": algo, "inner": "crpo", "env": cfg.env, "seed": cfg.seed, "env_cfg": {cfg.env: cfg.env_cfg},
             "inner_cfg": {"crpo": {"step_size": cfg.alpha0}},
             "trainer": {"iters": iters, "adapt_steps": cfg.steps, "envs_per_task": cfg.envs_per_task,
                         "episodes_per_env": 1, "num_threads": 1, "tasks_per_iter": 1 if algo == "meta_srl" else 10}}
    if algo == "meta_srl":
        layer["outer_cfg"] = {"online_dualdice": cfg.learner_cfg}
    return MetaTrainer(resolve_config([("online", layer)]))


def references(cfg: ContinuousOnlineConfig, trainer, tasks: list, cache: Path | None) -> np.ndarray:
    """J_ref_t for every task (read from ``cache`` when it holds them for this setup)."""
    from safemeta.model import stacked_theta

    key = {"env": cfg.env, "env_cfg": cfg.env_cfg, "seed": cfg.seed, "tasks": cfg.tasks,
           "reference_steps": cfg.reference_steps, "alpha0": cfg.alpha0, "envs_per_task": cfg.envs_per_task}
    if cache is not None and cache.exists():
        saved = json.loads(cache.read_text())
        if saved["key"] == key:
            return np.array(saved["J_ref"])
    family, n = trainer.family, len(tasks)
    d = family.cost_limit_for("train")
    venv = family.make(tasks, cfg.envs_per_task, "cpu", seed=cfg.seed + 1)
    result = trainer.adapter.adapt(stacked_theta(trainer.meta, n), venv, cfg.reference_steps,
                                   trainer.inner.init_state(n, d), trainer.meta.critics_for(n), 1,
                                   torch.Generator().manual_seed(cfg.seed), final_rollout=True)
    ret = np.array([b.ep_return.numpy() for b in result.batches])  # [R + 1, T]
    cost = np.array([b.ep_cost.numpy() for b in result.batches])
    j_ref = np.where(cost <= d, ret, -np.inf).max(0)
    j_ref = np.where(np.isfinite(j_ref), j_ref, ret[np.argmin(cost, 0), np.arange(n)])  # never feasible: least cost
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"key": key, "J_ref": j_ref.tolist()}))
    return j_ref


def run_online_continuous(cfg: ContinuousOnlineConfig, reference_cache: Path | None = None,
                          on_task=None) -> list[dict[str, float]]:
    from safemeta.model import fit_meta_critics, init_meta_params, stacked_theta
    from safemeta.params import stack

    trainer = _trainer(cfg, "meta_srl")
    family, inner = trainer.family, trainer.inner
    tasks = family.sample(cfg.tasks, "train", np.random.default_rng([cfg.seed, 7]))
    j_ref = references(cfg, trainer, tasks, reference_cache)
    d = family.cost_limit_for("train")
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    meta = trainer.meta
    if cfg.learner == "pretrained":
        pre = _trainer(cfg, "pretrained", cfg.pretrain_iters)
        for _ in range(cfg.pretrain_iters):
            pre.train_iteration()
        meta = pre.meta
    critics = lambda: meta.critics_for(1)  # noqa: E731  (pretrained: its own fitted critics)
    past: list[dict] = []
    rows, gaps, viols = [], [], []
    for t, task in enumerate(tasks, start=1):
        overrides: dict = {}
        if cfg.learner == "meta_srl":
            overrides = trainer.outer.inner_overrides([task])
            theta, crit = stacked_theta(meta, 1), trainer.outer.initial_critics(1)
        elif cfg.learner == "random":
            torch.manual_seed(cfg.seed * 100_003 + t)
            fresh = init_meta_params(trainer.actor, trainer.critics, trainer.obs_dim, trainer.cfg)
            theta, crit = stacked_theta(fresh, 1), fresh.critics_for(1)
        elif cfg.learner == "fal" and past:
            theta = stack({k: torch.stack([p[k] for p in past]).mean(0) for k in past[0]}, 1)
            crit = critics()
        else:  # pretrained, or fal before any task
            theta, crit = stacked_theta(meta, 1), critics()
        alpha = float(overrides.get("step_size", torch.tensor([cfg.alpha0]))[0])
        venv = family.make([task], cfg.envs_per_task, "cpu", seed=cfg.seed * 1000 + t)
        result = trainer.adapter.adapt({k: v.clone() for k, v in theta.items()}, venv, cfg.steps,
                                       inner.init_state(1, d, **overrides), crit, 1, gen, final_rollout=True)
        info = {}
        if cfg.learner == "meta_srl":  # the critics' initialization is carried as in the trainer, then the update
            result.meta_batch = fit_meta_critics(trainer.meta, trainer.critics, result.batches[0])
            info = trainer.outer.update(result, [task])
        past.append({k: v[0].detach() for k, v in result.params[-1].items()})
        j_hat, c_hat = float(result.batches[-1].ep_return[0]), float(result.batches[-1].ep_cost[0])
        gaps.append(float(j_ref[t - 1]) - j_hat)
        viols.append(max(0.0, c_hat - d))
        rows.append({"t": t, "gap": gaps[-1], "violation": viols[-1], "taog": float(np.mean(gaps)),
                     "tacv": float(np.mean(viols)), "alpha": alpha, "J_r": j_hat, "J_c": c_hat,
                     "J_r_ref": float(j_ref[t - 1]), **{f"learner/{k.split('/')[-1]}": v for k, v in info.items()}})
        if on_task is not None:
            on_task(rows[-1])
    return rows
