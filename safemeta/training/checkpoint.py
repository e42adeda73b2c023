"""Checkpoints: atomic writes (write to a temporary file, fsync, rename) and a loader that skips a
truncated or corrupt file with a warning and falls back to the previous one.

A state holding a non-finite float tensor is never written (the trainer undoes such updates first; this
is the last guard). A write that fails (disk full, directory gone) removes its temporary file and stops
the run with a message naming the last good checkpoint, which the rename never touched."""
from __future__ import annotations

import io
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

    def save(self, state: dict, iteration: int) -> Path | None:
        bad = nonfinite_entries(state)
        if bad:
            warnings.warn(f"Checkpoint at iteration {iteration} not written: non-finite values in {', '.join(bad[:5])}.",
                          stacklevel=2)
            return None
        path = self.dir / f"ckpt-{iteration:06d}.pt"
        tmp = self.dir / f".{path.name}.tmp"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with tmp.open("wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            last = self.paths()
            raise UserError(f"Cannot write checkpoint '{path}': {e.strerror or e}. "
                            + (f"The last good checkpoint, '{last[-1]}', is intact: free space and continue with "
                               f"`safemeta train --resume {self.dir.parent}`." if last else "No checkpoint was written yet.")
                            ) from None
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


def checkpoint_bytes(state: dict) -> int:
    """Bytes one checkpoint of ``state`` takes."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.tell()


def nonfinite_entries(obj, prefix: str = "") -> list[str]:
    """Dotted names of the float tensors in a nested dict / list state that hold NaN or Inf."""
    if isinstance(obj, torch.Tensor):
        return [prefix or "value"] if obj.is_floating_point() and not bool(torch.isfinite(obj).all()) else []
    if isinstance(obj, dict):
        return [b for k, v in obj.items() for b in nonfinite_entries(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(obj, (list, tuple)):
        return [b for i, v in enumerate(obj) for b in nonfinite_entries(v, f"{prefix}[{i}]")]
    return []
