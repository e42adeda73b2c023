"""Metrics of a run: ``metrics.jsonl`` (one row per iteration, the source of truth), ``metrics.csv``
(rewritten atomically from it, columns = union of keys), optional Weights & Biases logging, offline by
default so it never needs a login or the network, and optional TensorBoard event files
(``RUN_DIR/tensorboard``, every numeric metric as a scalar at step = iteration)."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from rich.console import Console

from safemeta.errors import UserError

console = Console(stderr=True, soft_wrap=True)  # progress and messages of every command (stderr: stdout stays for data)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class MetricsLog:
    def __init__(self, run_dir: Path, wandb_cfg: Any = None, config: dict | None = None):
        self.jsonl = run_dir / "metrics.jsonl"
        self.csv = run_dir / "metrics.csv"
        self.rows: list[dict] = []
        if self.jsonl.exists():
            self.rows = [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]
        self.wandb = None
        if wandb_cfg is not None and wandb_cfg.wandb:
            self.wandb = _start_wandb(run_dir, wandb_cfg, config or {})
        self.tensorboard = None
        if wandb_cfg is not None and getattr(wandb_cfg, "tensorboard", False):
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def truncate(self, iteration: int) -> None:
        """Drop rows after ``iteration`` (a resumed run repeats them)."""
        self.rows = [r for r in self.rows if r["iter"] <= iteration]
        atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in self.rows))
        self._write_csv()

    def log(self, row: dict) -> None:
        self.rows.append(row)
        with self.jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self._write_csv()
        if self.wandb is not None:
            self.wandb.log(row, step=row["iter"])
        if self.tensorboard is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "iter":
                    self.tensorboard.add_scalar(key, value, row["iter"])
            self.tensorboard.flush()

    def _write_csv(self) -> None:
        keys: list[str] = []
        for r in self.rows:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(self.rows)
        atomic_write_text(self.csv, buf.getvalue())

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _start_wandb(run_dir: Path, cfg: Any, config: dict):
    try:
        import wandb
    except ImportError:
        raise UserError("--wandb needs the wandb package: run `make venv` to install the pinned stack.") from None
    os.environ.setdefault("WANDB_SILENT", "true")
    return wandb.init(project=cfg.wandb_project, mode=cfg.wandb_mode, dir=str(run_dir), config=config,
                      name=run_dir.name, reinit=True)
