"""Run directories: ``<out>/<algo>-<inner>-<env>/<timestamp>-s<seed>/``, created fresh, never reused."""
from __future__ import annotations

import os
import time
from pathlib import Path

from safemeta.errors import UserError


def new_run_dir(out: str | Path, algo: str, inner: str, env: str, seed: int) -> Path:
    group = Path(out) / f"{algo}-{inner}-{env}"
    try:
        group.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"Cannot create the run directory under '{out}': {e.strerror}.") from None
    if not os.access(group, os.W_OK):
        raise UserError(f"The run directory '{group}' is not writable.")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = group / (f"{stamp}-s{seed}" if i == 0 else f"{stamp}-{i}-s{seed}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise UserError(f"Could not find a free run directory name under '{group}'.")
