"""Meta-SRL's online protocol on a continuous (neural-policy) family, with *estimated* TAOG / TACV.

    tasks 1..T ~ family (train split);  references: CRPO for ``reference_steps`` steps from a fresh init
    on all T tasks at once (batched), J_ref_t = the best return among its iterates whose cost is <= d
    for t = 1..T:  theta_t, alpha_t from the learner;  M CRPO steps on task t (and a rollout of theta_M);
                   pi_hat_t = the iterate CRPO hands out (its output rule, ``inner_cfg.crpo.output``: by
                   default the latest whose own batch estimated its cost within d + eta, as Algorithm 1
                   outputs from N_0);  a fresh evaluation rollout of pi_hat_t gives J_hat_t and C_hat_t
                   (fresh: the batch that selected pi_hat_t would bias its cost low);
                   gap_t = J_ref_t - J_hat_t,  viol_t = max(0, C_hat_t - d)

Returns and costs are undiscounted episode means of rollouts (the trainer's own statistics), so the gap
is an estimate against a long-trained reference, not the exact LP gap of the tabular protocol
(`safemeta.online.protocol`). Learners (where CRPO starts task t):

* ``meta_srl``: the `online_dualdice` outer updater of preset meta_srl, learning theta and alpha;
* ``random``: a fresh random policy init per task (no transfer);
* ``pretrained``: preset pretrained with CRPO, trained for ``pretrain_iters`` meta-iterations before the
  sequence, reused as every task's start;
* ``fal`` (follow the average leader): theta_t = the mean of the past tasks' adapted *parameters*;
* ``averaging``: the policy closest in KL to the uniform mixture of the past handed-out *policies*
  pi_hat_1 .. pi_hat_{t-1}, i.e. (follow the leader) theta_t approximately minimizes
  L_t(theta) = (1/(t-1)) sum_{tau<t} E_{s ~ S_tau} KL(pi_hat_tau(.|s) || pi_theta(.|s)),
  S_tau a uniform subsample (``AVERAGING_STATES``) of the states of pi_hat_tau's own rollout (at a state
  shared by all tau this is KL(mixture || pi_theta) up to a constant: the mixture's M-projection). It runs
  meta_srl's distillation (`safemeta.algorithms.outer.meta_srl.distill_mixture`, with the
  ``distill_iters``, ``lr_phi``, ``distill_tol`` and ``leader_check_iters`` of ``learner_cfg``, default
  online_dualdice's: Adam to convergence) from a fresh Adam warm-started at theta_{t-1}; theta_1 is the
  shared init (as for ``fal``). It differs from meta_srl's update of phi (the same leader, issue 18) only
  by uniform state weights (meta_srl draws S_tau from the DualDICE-estimated visitation d_hat_tau) and by
  a fixed alpha (the tabular counterpart: `safemeta.algorithms.meta_srl.baselines`, ``averaging``).

The baselines use CRPO's step size ``alpha0``; meta_srl starts from it.

Critics, one rule for every learner: each learner carries its own critics' initialization (V_R, V_C)
across the sequence, ``pretrained``'s starting from its pretrained critics and every other learner's from
the shared init (that of the meta_srl trainer, drawn with the run's seed). Task t's critics start from
it, and after task t it is fitted on task t's first batch (the rollouts of theta_t) by
`safemeta.training.model.fit_meta_critics`, as the trainer does for every method. ``random``'s *policy* stays
fresh per task; its critics follow the rule.
"""
from __future__ import annotations

import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from safemeta.config.schema import spec

LearnerName = Literal["meta_srl", "random", "pretrained", "fal", "averaging"]
CONTINUOUS_LEARNERS: tuple[str, ...] = typing.get_args(LearnerName)
AVERAGING_STATES = 256  # states kept per past task by ``averaging`` (a uniform subsample of its final rollout)


@dataclass
class ContinuousOnlineConfig:
    learner: LearnerName = "meta_srl"
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
    from safemeta.training.trainer import MetaTrainer

    layer = {"algo": algo, "inner": "crpo", "env": cfg.env, "seed": cfg.seed, "env_cfg": {cfg.env: cfg.env_cfg},
             "inner_cfg": {"crpo": {"step_size": cfg.alpha0}},
             "trainer": {"iters": iters, "adapt_steps": cfg.steps, "envs_per_task": cfg.envs_per_task,
                         "episodes_per_env": 1, "num_threads": 1, "tasks_per_iter": 1 if algo == "meta_srl" else 10}}
    if algo == "meta_srl":
        layer["outer_cfg"] = {"online_dualdice": cfg.learner_cfg}
    return MetaTrainer(resolve_config([("online", layer)]))


def references(cfg: ContinuousOnlineConfig, trainer, tasks: list, cache: Path | None) -> np.ndarray:
    """J_ref_t for every task (read from ``cache`` when it holds them for this setup)."""
    from safemeta.training.model import stacked_theta

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


# the leader's pieces live with meta_srl's learner (re-exported here for the averaging learner and tests)
from safemeta.algorithms.outer.meta_srl import (Distilled, PolicyTarget, distill_mixture,  # noqa: E402,F401
                                                       handed_out, mixture_distance, policy_target)


# ------------------------------------------------------------------------------------------------ learners

class Learner:
    """Where CRPO starts task t: ``propose`` gives theta_t (stacked for one task) and the inner overrides
    (alpha_t); ``critics`` the task's critics, from the carried initialization ``self.carried`` (a
    `MetaParams` whose critics follow the module's rule); ``observe`` fits them and updates the learner."""

    def __init__(self, cfg: ContinuousOnlineConfig, trainer, carried):
        self.cfg, self.trainer, self.carried = cfg, trainer, carried
        self.t = 0

    def propose(self, task) -> tuple[dict, dict]:
        from safemeta.training.model import stacked_theta

        return stacked_theta(self.carried, 1), {}

    def critics(self):
        return self.carried.critics_for(1)

    def observe(self, result, task) -> dict[str, float]:
        from safemeta.training.model import fit_meta_critics

        self.t += 1
        result.meta_batch = fit_meta_critics(self.carried, self.trainer.critics, result.batches[0])
        return self.update(result, task)

    def update(self, result, task) -> dict[str, float]:
        return {}


class MetaSRLLearner(Learner):
    def propose(self, task) -> tuple[dict, dict]:
        return super().propose(task)[0], self.trainer.outer.inner_overrides([task])

    def update(self, result, task) -> dict[str, float]:
        return self.trainer.outer.update(result, [task])


class RandomLearner(Learner):
    def propose(self, task) -> tuple[dict, dict]:
        from safemeta.training.model import build_modules
        from safemeta.rollout.params import stack
        from safemeta.rollout.policy import init_params

        tr = self.trainer
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed * 100_003 + self.t + 1)
            actor, _ = build_modules(tr.cfg, tr.obs_dim, tr.act_dim)
        return {k: v.clone() for k, v in stack(init_params(actor), 1).items()}, {}


class FALLearner(Learner):
    def __init__(self, *args):
        super().__init__(*args)
        self.past: list[dict] = []

    def propose(self, task) -> tuple[dict, dict]:
        from safemeta.rollout.params import stack

        if not self.past:
            return super().propose(task)
        mean = {k: torch.stack([p[k] for p in self.past]).mean(0) for k in self.past[0]}
        return {k: v.clone() for k, v in stack(mean, 1).items()}, {}

    def update(self, result, task) -> dict[str, float]:
        pi_hat, _ = handed_out(self.trainer.inner, result)
        self.past.append({k: v[0].detach() for k, v in pi_hat.items()})
        return {}


class AveragingLearner(Learner):
    def __init__(self, *args):
        super().__init__(*args)
        self.targets: list[PolicyTarget] = []
        self.theta = {k: v.detach().clone() for k, v in self.carried.theta.items()}  # theta_1: the shared init

    def propose(self, task) -> tuple[dict, dict]:
        from safemeta.rollout.params import stack

        return {k: v.clone() for k, v in stack(self.theta, 1).items()}, {}

    def update(self, result, task) -> dict[str, float]:
        actor_fn, outer_cfg = self.trainer.inner.actor_fn, self.trainer.outer.cfg
        gen = torch.Generator().manual_seed(self.cfg.seed * 1000 + self.t)
        pi_hat, idx = handed_out(self.trainer.inner, result)
        own = result.batches[min(int(idx[0]), len(result.batches) - 1)]  # the handed-out iterate's rollout
        self.targets.append(policy_target(actor_fn, pi_hat, own.obs, AVERAGING_STATES, gen))
        res = distill_mixture(actor_fn, self.theta, self.targets, outer_cfg.distill_iters, outer_cfg.lr_phi,
                              tol=outer_cfg.distill_tol, check_iters=outer_cfg.leader_check_iters,
                              max_states=outer_cfg.leader_states, gen=gen)
        self.theta = res.theta
        return {"averaging/distance": res.before, "averaging/distance_after": res.after,
                "averaging/leader_grad_norm": res.grad_norm, "averaging/leader_gap": res.leader_gap,
                "averaging/distill_steps": float(res.steps)}


def make_learner(cfg: ContinuousOnlineConfig, trainer) -> Learner:
    """The learner ``cfg.learner``; its carried critics start from the shared init (``pretrained``: its own)."""
    from safemeta.errors import UserError

    kinds = {"meta_srl": MetaSRLLearner, "random": RandomLearner, "pretrained": Learner, "fal": FALLearner,
             "averaging": AveragingLearner}
    if cfg.learner not in kinds:
        raise UserError(f"Unknown continuous online learner '{cfg.learner}'; valid: {', '.join(CONTINUOUS_LEARNERS)}.")
    carried = trainer.meta
    if cfg.learner == "pretrained":
        pre = _trainer(cfg, "pretrained", cfg.pretrain_iters)
        for _ in range(cfg.pretrain_iters):
            pre.train_iteration()
        carried = pre.meta
    return kinds[cfg.learner](cfg, trainer, carried)


def run_online_continuous(cfg: ContinuousOnlineConfig, reference_cache: Path | None = None,
                          on_task=None) -> list[dict[str, float]]:
    trainer = _trainer(cfg, "meta_srl")
    family, inner = trainer.family, trainer.inner
    tasks = family.sample(cfg.tasks, "train", np.random.default_rng([cfg.seed, 7]))
    j_ref = references(cfg, trainer, tasks, reference_cache)
    learner = make_learner(cfg, trainer)
    d = family.cost_limit_for("train")
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    eval_gen = torch.Generator().manual_seed(cfg.seed + 3)  # the scoring rollouts' own stream
    rows, gaps, viols = [], [], []
    for t, task in enumerate(tasks, start=1):
        theta, overrides = learner.propose(task)
        alpha = float(overrides.get("step_size", torch.tensor([cfg.alpha0]))[0])
        venv = family.make([task], cfg.envs_per_task, "cpu", seed=cfg.seed * 1000 + t)
        result = trainer.adapter.adapt(theta, venv, cfg.steps, inner.init_state(1, d, **overrides),
                                       learner.critics(), 1, gen, final_rollout=True)
        pi_hat, idx = handed_out(inner, result)
        scored = trainer.adapter.collector.collect(
            pi_hat, family.make([task], cfg.envs_per_task, "cpu", seed=10**9 + cfg.seed * 1000 + t), 1, eval_gen)
        info = learner.observe(result, task)
        j_hat, c_hat = float(scored.ep_return[0]), float(scored.ep_cost[0])
        gaps.append(float(j_ref[t - 1]) - j_hat)
        viols.append(max(0.0, c_hat - d))
        rows.append({"t": t, "gap": gaps[-1], "violation": viols[-1], "taog": float(np.mean(gaps)),
                     "tacv": float(np.mean(viols)), "alpha": alpha, "J_r": j_hat, "J_c": c_hat,
                     "J_r_ref": float(j_ref[t - 1]), "out_index": int(idx[0]),
                     "J_r_last": float(result.batches[-1].ep_return[0]), "J_c_last": float(result.batches[-1].ep_cost[0]),
                     **{f"learner/{k.split('/')[-1]}": v for k, v in info.items()}})
        if on_task is not None:
            on_task(rows[-1])
    return rows
