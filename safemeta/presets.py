"""Algorithm presets (registry ``algo``): a name bound to a YAML file of settings.

Built-in presets are the files ``configs/algos/<name>.yaml``; a preset fixes the outer updater, the
default inner solver and tuned hyperparameters, and may carry settings for several inner solvers
under ``inner_cfg`` so that ``--inner`` can swap them. Settings for one family go in
``configs/algos/<name>/<env>.yaml`` next to it. Plugins register more with `register_preset`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from safemeta import registry
from safemeta.config.loader import CONFIG_DIR, read_yaml


@dataclass(frozen=True)
class Preset:
    name: str
    source: str  # the YAML file

    def settings(self) -> dict:
        data = read_yaml(self.source, f"preset file of algo '{self.name}'")
        return {"algo": self.name, **data}

    def family_file(self, env: str) -> Path:
        """``<preset dir>/<name>/<env>.yaml``: this preset's settings for one family (may not exist)."""
        return Path(self.source).parent / self.name / f"{env}.yaml"


def register_preset(name: str, yaml_path: str | Path, description: str = "") -> Preset:
    return registry.algo.add(name, Preset(name, str(yaml_path)), description)


def _description(path: Path) -> str:
    first = path.read_text().splitlines()[0] if path.read_text() else ""
    return first.lstrip("# ").strip() if first.startswith("#") else ""


for _path in sorted(Path(str(CONFIG_DIR / "algos")).glob("*.yaml")):
    register_preset(_path.stem, _path, _description(_path))
