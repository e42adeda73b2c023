"""Run directories: ``<out>/<algo>-<inner>-<env>/<timestamp>-s<seed>/``, created fresh, never reused."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
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


def check_free_space(where: str | Path, need_bytes: int) -> None:
    """Fail before training if the disk holding ``where`` (or its nearest existing parent) cannot take
    ``need_bytes`` (the run's checkpoints and logs)."""
    path = Path(where).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise UserError(f"Not enough disk space for the run under '{where}': {free / 2**20:.1f} MiB free on the disk "
                        f"of '{path}', the run needs about {need_bytes / 2**20:.1f} MiB (checkpoints and logs). "
                        "Free space or choose another --out.")


def check_writable(run_dir: Path) -> None:
    """Write, flush and remove a probe file in ``run_dir``: a read-only or full file system fails here, with
    the path in the message, not at the first checkpoint."""
    probe = run_dir / ".write-probe"
    try:
        with probe.open("wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        probe.unlink(missing_ok=True)
        raise UserError(f"The run directory '{run_dir}' is not writable: {e.strerror or e}.") from None


def run_info() -> dict:
    """Provenance of a run: the command, the package version and the git commit it ran from."""
    import safemeta

    cli = Path(sys.argv[0]).name in ("safemeta", "cli.py")
    from safemeta.registry import loaded_plugins

    return {"command": " ".join(["safemeta", *sys.argv[1:]] if cli else sys.argv), "plugins": list(loaded_plugins),
            "version": safemeta.__version__, "commit": git_commit(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}


def git_commit() -> str:
    """The commit of the safemeta source tree (with ``+dirty`` for uncommitted changes), or ``unknown``."""
    src = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "-C", str(src), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev + ("+dirty" if dirty else "")) if rev else "unknown"
