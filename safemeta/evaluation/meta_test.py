"""Meta-test (README "Meta-test protocol"; DESIGN.md "Evaluation protocol").

    tasks    = family.sample(eval.tasks, "test")       (a fixed seed: every meta-test of a run sees the same)
    d        = the family's *test* cost limit           (car-circle-hazard: 5, where training uses 10)
    solver   = the run's own inner solver, or eval.inner at the family's settings (the common-solver view)
    state    = the solver's defaults, or (eval.multipliers: inherit) what meta-training learned for it
    critics  = the carried critics' initialization (eval.critics: inherit) or a random one (fresh)
    K steps of the solver from theta, each on its own batch (envs_per_task x episodes_per_env per task);
    after each step k = 0..K the policy the solver hands out (``InnerSolver.output``) is scored on
    eval.episodes *fresh* episodes per task that it did not train on;
    beside it, the cost paid while adapting: the adaptation batches' own episode costs.

The evaluation draws from its own generators and never touches the training RNG, and its rollouts never
move the observation normalization, so meta-tests do not change a run's trajectory.
"""
from __future__ import annotations

import json
import re
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from safemeta import registry
from safemeta.training.adaptation import Adapter, AdaptationResult
from safemeta.config.loader import family_solver_config, to_dict
from safemeta.config.schema import EvalConfig
from safemeta.rollout.critics import CriticParams
from safemeta.errors import UserError
from safemeta.training.model import init_meta_params, stacked_theta

EVAL_SEED_OFFSET = 7919  # the evaluation episodes' env and action seeds, apart from the adaptation batches'


@dataclass
class MetaTestSpec:
    tasks: int
    adapt_steps: int
    envs_per_task: int
    episodes_per_env: int
    seed: int
    episodes: int = 16
    inner: str = ""
    multipliers: str = "inherit"
    critics: str = "inherit"
    twin: bool = False

    @classmethod
    def from_config(cls, ev: EvalConfig, **overrides) -> "MetaTestSpec":
        """``ev`` with the given fields replaced (None: keep the config's)."""
        ev = replace(ev, **{k: v for k, v in overrides.items() if v is not None})
        return cls(**{f.name: getattr(ev, f.name) for f in fields(cls)})


def same_spec(stored: dict | None, want: MetaTestSpec) -> bool:
    """Whether a report's stored ``spec`` is ``want``; a key added to the spec since the report was written
    counts at its default (a new meta-test option does not orphan the views already made)."""
    if not isinstance(stored, dict):
        return False
    defaults = {f.name: f.default for f in fields(MetaTestSpec) if f.default is not MISSING}
    return {**defaults, **stored} == want.__dict__


def fine_tuning_solver(trainer, spec: MetaTestSpec):
    """(solver, description): the run's own inner solver, or ``spec.inner`` at the family's settings."""
    if not spec.inner:
        return trainer.inner, {"name": trainer.cfg.inner, "view": "own", "settings": to_dict(trainer.cfg.inner_params)}
    names = registry.inner.names()
    if spec.inner not in names:
        raise UserError(f"eval.inner '{spec.inner}' names no registered inner solver. Valid: '' (the run's own), "
                        f"{', '.join(names)}.")
    cls = registry.inner.get(spec.inner)
    kind = getattr(trainer.actor, "kind", type(trainer.actor).__name__)
    if kind not in cls.policy_kinds:
        able = [n for n in names if kind in registry.inner.get(n).policy_kinds]
        raise UserError(f"eval.inner '{spec.inner}' cannot fine-tune this run's policy (a {kind} actor; "
                        f"'{spec.inner}' updates {', '.join(cls.policy_kinds)} actors). Solvers that can: "
                        f"{', '.join(able) or '(none)'}.")
    settings = family_solver_config(trainer.cfg.env, spec.inner)
    solver = cls(settings, trainer.actor)
    solver.device = trainer.inner.device
    return solver, {"name": spec.inner, "view": "common", "settings": to_dict(settings)}


def initial_critics(trainer, spec: MetaTestSpec, n: int) -> CriticParams:
    if spec.critics == "inherit":
        return trainer.outer.initial_critics(n)
    with torch.random.fork_rng(devices=[]):  # a fixed random init, off the run's random stream
        torch.manual_seed(spec.seed)
        fresh = init_meta_params(trainer.actor, trainer.critics, trainer.obs_dim, trainer.cfg)
    return fresh.critics_for(n)


def handed_out(solver, result: AdaptationResult, k: int):
    """The policy ``solver`` hands out after the first ``k`` steps of ``result`` (``InnerSolver.output``)."""
    return solver.output(AdaptationResult(result.params[:k + 1], result.batches[:k + 1], result.state, result.critics))


def twin_family(family):
    """The family's Safety-Gymnasium twin (``sg-<name>``) at the same task ranges, showing the built-in family's
    observations computed from the MuJoCo state (`safemeta.envs.safety_gym_families.PlanarObservations`)."""
    name = f"sg-{family.name}"
    cls = registry.env.get(name) if name in registry.env.names() else None
    names = {f.name for f in fields(cls.Config)} if cls is not None else set()
    if "observation" not in names:
        able = [n[3:] for n in registry.env.names() if n.startswith("sg-")
                and "observation" in {f.name for f in fields(registry.env.get(n).Config)}]
        raise UserError(f"eval.twin: family '{family.name}' has no Safety-Gymnasium twin that shows its observations. "
                        f"Families that have one: {', '.join(able) or '(none)'}.")
    shared = {f.name: getattr(family.cfg, f.name) for f in fields(family.cfg) if f.name in names}
    return cls(cls.Config(**shared, observation="planar"))


def meta_test(trainer, spec: MetaTestSpec, device: str = "cpu") -> dict:
    family, meta, collector = trainer.family, trainer.meta, trainer.adapter.collector
    if spec.twin:
        family = twin_family(family)
    solver, solver_desc = fine_tuning_solver(trainer, spec)
    rng = np.random.default_rng(spec.seed)
    tasks = family.sample(spec.tasks, "test", rng)
    n = len(tasks)
    limit = family.cost_limit_for("test")
    learned = trainer.outer.inherited_state(tasks) if spec.multipliers == "inherit" else {}
    inherited = {k: v for k, v in learned.items() if k in solver.default_state(1)}
    state = solver.init_state(n, limit, **inherited)
    venv = family.make(tasks, spec.envs_per_task, device, seed=spec.seed)
    adapter = Adapter(collector, trainer.critics, solver)
    result = adapter.adapt(stacked_theta(meta, n), venv, spec.adapt_steps, state, initial_critics(trainer, spec, n),
                           spec.episodes_per_env, torch.Generator().manual_seed(spec.seed), final_rollout=False)
    eval_venv = family.make(tasks, spec.episodes, device, seed=spec.seed + EVAL_SEED_OFFSET)
    eval_gen = torch.Generator().manual_seed(spec.seed + EVAL_SEED_OFFSET)
    paid = torch.zeros(n, device=solver.device)
    steps = []
    for k in range(spec.adapt_steps + 1):
        scored = collector.collect(handed_out(solver, result, k), eval_venv, 1, eval_gen)
        ret, cost = scored.ep_return.tolist(), scored.ep_cost.tolist()
        within = [c <= limit for c in cost]
        adapt = result.batches[k] if k < len(result.batches) else None
        steps.append({"step": k, "return_mean": float(np.mean(ret)), "cost_mean": float(np.mean(cost)),
                      "violation_rate": 1.0 - float(np.mean(within)), "cost_paid_mean": float(paid.mean()),
                      "adapt_cost_mean": None if adapt is None else float(adapt.ep_cost.mean()),
                      "per_task": {"return": ret, "cost": cost, "within_limit": within, "cost_paid": paid.tolist(),
                                   "adapt_return": None if adapt is None else adapt.ep_return.tolist(),
                                   "adapt_cost": None if adapt is None else adapt.ep_cost.tolist()}})
        if adapt is not None:  # the cost this step's batch paid, summed over its episodes
            paid = paid + adapt.ep_cost * adapt.ep_count
    protocol = {"solver": solver_desc, "adapt_steps": spec.adapt_steps, "tasks": n, "cost_limit": limit,
                "eval_episodes": spec.episodes, "adapt_batch": {"envs_per_task": spec.envs_per_task,
                                                                "episodes_per_env": spec.episodes_per_env},
                "multipliers": spec.multipliers, "critics": spec.critics, "twin": family.name if spec.twin else "",
                "inherited": {k: float(torch.as_tensor(v, device="cpu").float().mean()) for k, v in inherited.items()},
                "scored_on": "fresh episodes"}
    return {"family": family.name, "split": "test", "cost_limit": limit, "spec": asdict(spec), "protocol": protocol,
            "tasks": [t.params for t in tasks], "env_steps_per_step": result.batches[0].env_steps if result.batches
            else 0, "eval_env_steps_per_step": scored.env_steps, "steps": steps}


def evaluate(trainer, tasks: int | None = None, adapt_steps: int | None = None, seed: int | None = None,
             **eval_overrides) -> dict:
    """The meta-test of ``trainer.cfg.eval`` with the given fields replaced (e.g. ``inner="trpolag",
    multipliers="fresh"`` for a common-solver view); its rollouts never move the observation normalization."""
    spec = MetaTestSpec.from_config(trainer.cfg.eval, tasks=tasks, adapt_steps=adapt_steps, seed=seed, **eval_overrides)
    try:
        return meta_test(trainer, spec, trainer.cfg.trainer.device)
    finally:
        if trainer.obs_norm is not None:
            trainer.obs_norm.discard()


def describe_protocol(protocol: dict | None) -> str:
    """The meta-test protocol of a report in one paragraph (the header of a board's table)."""
    if not protocol:  # a report from before the protocol was recorded
        return ("Legacy protocol: each method fine-tuned by its own solver, each step scored on the batch it trained "
                "on (no fresh evaluation episodes); multipliers and critics as the method carried them.")
    solver = protocol["solver"]
    who = (f"each run's own inner solver" if solver["view"] == "own"
           else f"one solver for every row, `{solver['name']}` at the family's settings (the common-solver view)")
    batch = protocol["adapt_batch"]
    mult = ("inherited from meta-training where the method learned one (C-MAML's meta lambda, pretrained's lambda, "
            "Meta-SRL's step size)" if protocol["multipliers"] == "inherit" else "at the solver's defaults for every row")
    critics = ("start from the critics' initialization carried by meta-training" if protocol["critics"] == "inherit"
               else "start from a random init")
    twin = (f" on the MuJoCo twin `{protocol['twin']}` (the policy sees the built-in family's observations computed "
            "from the MuJoCo state: the reality gap)" if protocol.get("twin") else "")
    return (f"Meta-test{twin}: {protocol['tasks']} held-out tasks (split `test`) at the test cost limit d = "
            f"{protocol['cost_limit']:g}; K = {protocol['adapt_steps']} fine-tuning steps by {who}, each step on "
            f"{batch['envs_per_task']} envs x {batch['episodes_per_env']} episode(s) per task; after each step the policy "
            f"the solver hands out is scored on {protocol['eval_episodes']} fresh episodes per task that it did not "
            f"train on, and the cost paid by the fine-tuning batches themselves is reported beside it. Multipliers: "
            f"{mult}. Task critics {critics}.")


VIEW_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def view_path(run_dir: Path, name: str) -> Path:
    if not VIEW_NAME.match(name):
        raise UserError(f"View name '{name}' must be letters, digits, '_', '.', '-' (e.g. common-trpolag).")
    return run_dir / "views" / f"{name}.json"


def save_view(run_dir: Path, name: str, report: dict) -> Path:
    """Store a meta-test report as the run's view ``name`` (``RUN_DIR/views/NAME.json``), atomically."""
    from safemeta.training.tracking import atomic_write_text

    path = view_path(run_dir, name)
    path.parent.mkdir(exist_ok=True)
    atomic_write_text(path, json.dumps({**report, "view": name}, indent=1))
    return path


def summary_metrics(report: dict, prefix: str = "eval") -> dict[str, float]:
    """Flat scalars for the metrics log: return/cost/violation after 0 and K steps, cost paid while adapting."""
    first, last = report["steps"][0], report["steps"][-1]
    return {f"{prefix}/return_0": first["return_mean"], f"{prefix}/cost_0": first["cost_mean"],
            f"{prefix}/return_K": last["return_mean"], f"{prefix}/cost_K": last["cost_mean"],
            f"{prefix}/violation_K": last["violation_rate"], f"{prefix}/cost_paid_K": last.get("cost_paid_mean", 0.0)}


def solver_endpoint(trainer, n_tasks: int, steps: int, envs_per_task: int, eval_envs: int, seed: int) -> dict:
    """Where the inner solver ends on its own: ``n_tasks`` training tasks, each its own policy from the
    initialization, ``steps`` inner steps (``envs_per_task`` x ``trainer.episodes_per_env`` episodes each),
    then on ``eval_envs`` fresh episodes per task the true return and cost of: the last iterate, the latest
    iterate estimated feasible (``latest_within_limit``) and the initial policy; ``output`` is whichever of
    the first two the solver hands out (``InnerSolver.output_rule``)."""
    from safemeta.algorithms.inner.base import latest_within_limit

    family, adapter, inner = trainer.family, trainer.adapter, trainer.inner
    tasks = family.sample(n_tasks, "train", np.random.default_rng(seed))
    device = trainer.cfg.trainer.device
    venv = family.make(tasks, envs_per_task, device, seed)
    res = adapter.adapt(stacked_theta(trainer.meta, n_tasks), venv, steps, inner.init_state(n_tasks, family.cost_limit),
                        trainer.meta.critics_for(n_tasks), trainer.cfg.trainer.episodes_per_env,
                        torch.Generator().manual_seed(seed), final_rollout=False)
    candidates = {"last": res.params[-1], "feasible": latest_within_limit(res, inner.tolerance),
                  "initial": res.params[0]}
    eval_venv = family.make(tasks, eval_envs, device, 1000 + seed)
    out: dict = {"cost_limit": family.cost_limit,
                 "constrained_J_last_batch": res.batches[-1].ep_constraint_cost.tolist()}
    for name, params in candidates.items():
        b = adapter.collector.collect(params, eval_venv, 1, torch.Generator().manual_seed(1000 + seed))
        out[name] = {"return": b.ep_return.tolist(), "cost": b.ep_cost.tolist()}
    out["output"] = out[inner.output_rule]
    return out
