"""Meta-test (DESIGN.md "Evaluation protocol").

Held-out tasks from split ``test`` (drawn from a fixed seed, so every meta-test of a run sees the same
tasks); from the method's initialization, K steps of the run's inner solver, each on a fixed env-step
budget (``envs_per_task * episodes_per_env`` episodes); per step and per task: mean episodic return,
mean episodic cost and whether the test cost limit is met. The evaluation draws from its own
generators and never touches the training RNG, so meta-tests do not change a run's trajectory.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from safemeta.adaptation import Adapter
from safemeta.model import MetaParams, stacked_theta
from safemeta.task import TaskFamily


@dataclass
class MetaTestSpec:
    tasks: int
    adapt_steps: int
    envs_per_task: int
    episodes_per_env: int
    seed: int


def meta_test(adapter: Adapter, family: TaskFamily, meta: MetaParams, outer, spec: MetaTestSpec,
              device: str = "cpu") -> dict:
    rng = np.random.default_rng(spec.seed)
    tasks = family.sample(spec.tasks, "test", rng)
    venv = family.make(tasks, spec.envs_per_task, device, seed=spec.seed)
    gen = torch.Generator().manual_seed(spec.seed)
    limit = family.cost_limit_for("test")
    n = len(tasks)
    state = adapter.inner.init_state(n, limit, **outer.inner_overrides(tasks))
    result = adapter.adapt(stacked_theta(meta, n), venv, spec.adapt_steps, state, outer.initial_critics(n),
                           spec.episodes_per_env, gen, final_rollout=True)
    steps = []
    for k, batch in enumerate(result.batches):
        ret, cost = batch.ep_return.tolist(), batch.ep_cost.tolist()
        within = [c <= limit for c in cost]
        steps.append({"step": k, "return_mean": float(np.mean(ret)), "cost_mean": float(np.mean(cost)),
                      "violation_rate": 1.0 - float(np.mean(within)),
                      "per_task": {"return": ret, "cost": cost, "within_limit": within}})
    return {"family": family.name, "split": "test", "cost_limit": limit, "spec": asdict(spec),
            "tasks": [t.params for t in tasks], "env_steps_per_step": result.batches[0].env_steps, "steps": steps}


def summary_metrics(report: dict, prefix: str = "eval") -> dict[str, float]:
    """Flat scalars for the metrics log: return/cost/violation after 0 and K steps."""
    first, last = report["steps"][0], report["steps"][-1]
    return {f"{prefix}/return_0": first["return_mean"], f"{prefix}/cost_0": first["cost_mean"],
            f"{prefix}/return_K": last["return_mean"], f"{prefix}/cost_K": last["cost_mean"],
            f"{prefix}/violation_K": last["violation_rate"]}


def solver_endpoint(trainer, n_tasks: int, steps: int, envs_per_task: int, eval_envs: int, seed: int) -> dict:
    """Where the inner solver ends on its own: ``n_tasks`` training tasks, each its own policy from the
    initialization, ``steps`` inner steps (``envs_per_task`` x ``trainer.episodes_per_env`` episodes each),
    then on ``eval_envs`` fresh episodes per task the true return and cost of: the last iterate, the latest
    iterate estimated feasible (``latest_within_limit``) and the initial policy; ``output`` is whichever of
    the first two the solver hands out (``InnerSolver.output_rule``)."""
    from safemeta.algorithms.inner.base import latest_within_limit

    family, adapter, inner = trainer.family, trainer.adapter, trainer.inner
    tasks = family.sample(n_tasks, "train", np.random.default_rng(seed))
    venv = family.make(tasks, envs_per_task, "cpu", seed)
    res = adapter.adapt(stacked_theta(trainer.meta, n_tasks), venv, steps, inner.init_state(n_tasks, family.cost_limit),
                        trainer.meta.critics_for(n_tasks), trainer.cfg.trainer.episodes_per_env,
                        torch.Generator().manual_seed(seed), final_rollout=False)
    candidates = {"last": res.params[-1], "feasible": latest_within_limit(res, inner.tolerance),
                  "initial": res.params[0]}
    eval_venv = family.make(tasks, eval_envs, "cpu", 1000 + seed)
    out: dict = {"cost_limit": family.cost_limit,
                 "constrained_J_last_batch": res.batches[-1].ep_constraint_cost.tolist()}
    for name, params in candidates.items():
        b = adapter.collector.collect(params, eval_venv, 1, torch.Generator().manual_seed(1000 + seed))
        out[name] = {"return": b.ep_return.tolist(), "cost": b.ep_cost.tolist()}
    out["output"] = out[inner.output_rule]
    return out
