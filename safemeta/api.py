"""The Python API, mirrored one-to-one by the CLI: `train`, `resume`, `Run.load`.

    import safemeta
    cfg = safemeta.resolve_config([("python", {"algo": "fomaml_trpo", "trainer": {"iters": 5}})])
    run = safemeta.train(cfg)
    act = safemeta.Run.load(run.path).policy(task, adapt_steps=1)
"""
from __future__ import annotations

import errno
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from safemeta.training.checkpoint import Checkpointer, checkpoint_bytes
from safemeta.config.loader import load_config, run_plugins, save_config, to_dict
from safemeta.config.schema import Config
from safemeta.errors import UserError
from safemeta.evaluation.meta_test import evaluate, summary_metrics
from safemeta.training.run_dir import check_free_space, check_writable, new_run_dir, run_info
from safemeta.rollout.task import Task
from safemeta.training.tracking import MetricsLog, atomic_write_text, console  # noqa: F401 (console: API)
from safemeta.training.trainer import MetaTrainer, planned_iterations



class Run:
    """A run directory with its trainer restored from the latest checkpoint."""

    def __init__(self, path: Path, trainer: MetaTrainer):
        self.path = Path(path)
        self.trainer = trainer

    @property
    def config(self) -> Config:
        return self.trainer.cfg

    @classmethod
    def load(cls, path: str | Path) -> "Run":
        path = Path(path)
        if not (path / "config.yaml").is_file():
            raise UserError(f"'{path}' is not a run directory (no config.yaml in it).")
        trainer = MetaTrainer(load_config(path / "config.yaml", run_plugins(path)))
        trainer.load_checkpoint(path)
        return cls(path, trainer)

    def policy(self, task: Task | None = None, adapt_steps: int = 0, seed: int = 0,
               deterministic: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
        """``obs -> action`` of the meta-policy, or of it adapted to ``task`` by ``adapt_steps`` inner steps."""
        params = self.trainer.adapted_params(task, adapt_steps, seed) if task is not None and adapt_steps else None
        return lambda obs: self.trainer.act(torch.as_tensor(obs, dtype=torch.float32), params, deterministic)

    def meta_test(self, tasks: int | None = None, adapt_steps: int | None = None, seed: int | None = None,
                  **eval_overrides) -> dict:
        """The run's meta-test (README "Meta-test protocol"); keyword arguments replace fields of its ``eval``
        section, e.g. ``inner="trpolag", multipliers="fresh"`` for the common-solver view."""
        return evaluate(self.trainer, tasks, adapt_steps, seed, **eval_overrides)


def train(cfg: Config, on_iteration: Callable[[dict], None] | None = None) -> Run:
    """Meta-train a new run in a fresh directory under ``cfg.out``."""
    trainer = MetaTrainer(cfg)  # validates names/capabilities before anything is written
    check_free_space(cfg.out, space_needed(trainer))
    run_dir = new_run_dir(cfg.out, cfg.algo_id, cfg.inner, cfg.env, cfg.seed)
    check_writable(run_dir)
    save_config(cfg, run_dir / "config.yaml")
    atomic_write_text(run_dir / "run.json", json.dumps(run_info(), indent=1))
    return _fit(trainer, run_dir, on_iteration)


def space_needed(trainer: MetaTrainer) -> int:
    """Bytes a run needs on disk: its kept checkpoints plus one being written, ~2 KB of logs per
    iteration, and a margin."""
    tr = trainer.cfg.trainer
    return checkpoint_bytes(trainer.state_dict()) * (tr.keep_checkpoints + 1) + 2048 * tr.iters + 2**20


def resume(run_dir: str | Path, iters: int | None = None, on_iteration: Callable[[dict], None] | None = None,
           executor: str | None = None, ray_address: str | None = None) -> Run:
    """Continue a run from its latest readable checkpoint (from scratch if it never reached one), optionally
    on another executor (its numbers depend on ``trainer.shards``, not on where the shards run)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"Cannot resume '{run_dir}': it is not a run directory (no config.yaml in it).")
    cfg = load_config(run_dir / "config.yaml", run_plugins(run_dir))
    if iters is not None and iters != cfg.trainer.iters:
        cfg.trainer.iters = iters
        save_config(cfg, run_dir / "config.yaml")
    if executor is not None:
        cfg.trainer.executor = executor
    if ray_address is not None:
        cfg.trainer.ray_address = ray_address
    trainer = MetaTrainer(cfg)
    check_free_space(run_dir, space_needed(trainer))
    check_writable(run_dir)
    if Checkpointer(run_dir).paths():
        path = trainer.load_checkpoint(run_dir)
        console.print(f"resumed from {path} (iteration {trainer.iteration})")
    return _fit(trainer, run_dir, on_iteration)


def _fit(trainer: MetaTrainer, run_dir: Path, on_iteration: Callable[[dict], None] | None = None) -> Run:
    cfg, tr = trainer.cfg, trainer.cfg.trainer
    log = MetricsLog(run_dir, cfg.log, to_dict(cfg))
    log.truncate(trainer.iteration)
    ckpt = Checkpointer(run_dir, tr.keep_checkpoints)
    report = None
    total = planned_iterations(cfg)
    if total < tr.iters:
        console.print(f"outer updater '{cfg.outer}' does no meta-training: trainer.iters={tr.iters} is not used")
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("return {task.fields[ret]}  cost {task.fields[cost]}"), TimeElapsedColumn(),
               TimeRemainingColumn()]
    lines = LineProgress(f"{cfg.algo}/{cfg.inner} on {cfg.env}", total, trainer.iteration,
                         enabled=cfg.log.progress and not console.is_terminal)
    try:
        with Progress(*columns, console=console, disable=not cfg.log.progress or not console.is_terminal,
                      transient=False) as progress:
            bar = progress.add_task(f"{cfg.algo}/{cfg.inner} on {cfg.env}", total=total, completed=trainer.iteration,
                                    ret="-", cost="-")
            while trainer.iteration < total:
                row = trainer.train_iteration()
                last = trainer.iteration == total
                if last or (tr.eval_every and trainer.iteration % tr.eval_every == 0):
                    report = evaluate(trainer)
                    row.update(summary_metrics(report))
                _check_finite(row)
                log.log(row)
                if last or trainer.iteration % tr.checkpoint_every == 0:
                    ckpt.save(trainer.state_dict(), trainer.iteration)
                if on_iteration is not None:
                    on_iteration(row)
                progress.update(bar, completed=trainer.iteration, ret=f"{row.get('train/return_K', math.nan):.3f}",
                                cost=f"{row.get('train/cost_K', math.nan):.3f}")
                lines.update(trainer.iteration, row)
    except OSError as e:  # a log or checkpoint write failed mid-run (disk full, directory removed, ...)
        if e.errno not in _DISK_ERRORS:
            raise
        last_ckpt = ckpt.paths()
        raise UserError(f"Writing to the run directory '{run_dir}' failed at iteration {trainer.iteration}: "
                        f"{e.strerror or e}. " + (f"The last good checkpoint is '{last_ckpt[-1]}': free space and "
                        f"continue with `safemeta train --resume {run_dir}`." if last_ckpt else "")) from None
    finally:
        trainer.close()
    if report is None:  # no iteration ran (e.g. the `random` preset, or resuming a finished run)
        report = evaluate(trainer)
        if not ckpt.paths():
            ckpt.save(trainer.state_dict(), trainer.iteration)
    report["iteration"] = trainer.iteration
    atomic_write_text(run_dir / "meta_test.json", json.dumps(report, indent=1))
    log.close()
    console.print(verdict(report, run_dir))
    return Run(run_dir, trainer)


def verdict(report: dict, run_dir: Path) -> str:
    """The meta-test's outcome in plain words (the last lines of `safemeta train`)."""
    first, last = report["steps"][0], report["steps"][-1]
    d, k, n = report["cost_limit"], len(report["steps"]) - 1, len(last["per_task"]["cost"])
    within = sum(bool(w) for w in last["per_task"]["within_limit"])
    safe = "within" if last["cost_mean"] <= d else "above"
    return (f"Verdict on {n} held-out tasks after K = {k} fine-tuning steps (scored on fresh episodes): {within} of {n} "
            f"tasks ({within / n:.0%}) keep their mean episode cost within the limit d = {d:g}; the mean cost "
            f"{last['cost_mean']:.2f} is {safe} d, at a mean return of {last['return_mean']:.2f} (before fine-tuning: "
            f"return {first['return_mean']:.2f}, cost {first['cost_mean']:.2f}); fine-tuning paid "
            f"{last.get('cost_paid_mean', 0.0):.1f} cost per task.\nRun directory: {run_dir} "
            f"(`safemeta eval {run_dir}` meta-tests it again).")


class LineProgress:
    """Progress without a terminal (a log file, a pipe, CI): one whole line about every 5% of the iterations
    and at the end (iteration, return, cost, elapsed, remaining), never a redrawn bar."""

    def __init__(self, label: str, total: int, start: int, enabled: bool):
        self.label, self.total, self.start, self.enabled = label, total, start, enabled
        self.every = max(1, total // 20)
        self.t0 = time.monotonic()

    def update(self, iteration: int, row: dict) -> None:
        if not self.enabled or (iteration % self.every and iteration != self.total):
            return
        elapsed = time.monotonic() - self.t0
        done = iteration - self.start
        remaining = elapsed / done * (self.total - iteration) if done else math.nan
        fmt = lambda sec: "?" if math.isnan(sec) else time.strftime("%H:%M:%S", time.gmtime(sec))  # noqa: E731
        console.print(f"{self.label}: iteration {iteration}/{self.total}  return {row.get('train/return_K', math.nan):.3f}"
                      f"  cost {row.get('train/cost_K', math.nan):.3f}  elapsed {fmt(elapsed)}  remaining {fmt(remaining)}")


_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.EIO}


def _check_finite(row: dict) -> None:
    bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        console.print(f"[yellow]warning: non-finite metrics at iteration {row['iter']}: {', '.join(bad)}")
