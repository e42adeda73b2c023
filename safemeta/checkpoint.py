"""Checkpoints: atomic writes (write to a temporary file, fsync, rename) and a loader that skips a
truncated or corrupt file with a warning and falls back to the previous one."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from safemeta.errors import UserError


class Checkpointer:
    def __init__(self, run_dir: Path, keep: int = 3):
        self.dir = Path(run_dir) / "checkpoints"
        self.keep = keep

    def paths(self) -> list[Path]:
        """Existing checkpoints, oldest first."""
        return sorted(self.dir.glob("ckpt-*.pt")) if self.dir.is_dir() else []

    def save(self, state: dict, iteration: int) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"ckpt-{iteration:06d}.pt"
        tmp = self.dir / f".{path.name}.tmp"
        with tmp.open("wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        for old in self.paths()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def load_latest(self) -> tuple[dict, Path]:
        candidates = self.paths()
        if not candidates:
            raise UserError(f"No checkpoint in '{self.dir}': the run has not reached its first checkpoint.")
        for path in reversed(candidates):
            try:
                state = torch.load(path, map_location="cpu", weights_only=False)
                if not isinstance(state, dict) or "iteration" not in state:
                    raise ValueError("not a safemeta checkpoint")
                return state, path
            except Exception as e:  # a truncated or corrupt file: report it, use the previous one
                warnings.warn(f"Checkpoint '{path}' cannot be read ({type(e).__name__}: {e}); trying the previous one.",
                              stacklevel=2)
        raise UserError(f"No readable checkpoint in '{self.dir}' (all {len(candidates)} are corrupt).")
