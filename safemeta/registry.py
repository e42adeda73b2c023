"""Name -> implementation tables: ``inner``, ``outer``, ``algo``, ``env`` and ``online`` (the meta-learners
of the online, one-task-after-another protocol of `safemeta.online.protocol`: Meta-SRL and its baselines).

Built-in entries register themselves when their module is imported (``load_builtins``). User code
adds entries without editing the package, either from a module named on the command line
(``--plugin my_mod`` or ``--plugin path/to/file.py``) or from a package entry point in the group
``safemeta.plugins`` (the entry point is imported; a callable target is called once).

    from safemeta.registry import register_inner

    @register_inner("my_solver")
    class MySolver(InnerSolver): ...
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

from safemeta.errors import UserError, suggest

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    description: str
    source: str  # "builtin", a plugin module name, or an entry point


class Registry(Generic[T]):
    """A table of named entries of one kind; an unknown name is a `UserError` listing the valid ones."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def add(self, name: str, obj: T, description: str = "", source: str = "builtin") -> T:
        if name in self._entries and self._entries[name].obj is not obj:
            raise UserError(
                f"{self.kind} '{name}' is registered twice (by {self._entries[name].source} and by {source})."
            )
        self._entries[name] = Entry(name, obj, description, source)
        return obj

    def __call__(self, name: str, description: str = "") -> Callable[[T], T]:
        """Decorator form: ``@registry("name")``."""

        def wrap(obj: T) -> T:
            doc_lines = (obj.__doc__ or "").strip().splitlines()
            return self.add(name, obj, description or (doc_lines[0] if doc_lines else ""), _current_source)

        return wrap

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        load_builtins()
        if name not in self._entries:
            valid = ", ".join(sorted(self._entries)) or "(none)"
            raise UserError(f"Unknown {self.kind} '{name}'. Valid {self.kind} names: {valid}.{suggest(name, self._entries)}")
        return self._entries[name]

    def names(self) -> list[str]:
        load_builtins()
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: str) -> bool:
        load_builtins()
        return name in self._entries


inner: Registry[Any] = Registry("inner solver")
outer: Registry[Any] = Registry("outer updater")
algo: Registry[Any] = Registry("algo")
env: Registry[Any] = Registry("env")
online: Registry[Any] = Registry("online meta-learner")

register_inner = inner
register_outer = outer
register_env = env
register_online = online

_current_source = "builtin"
_builtins_loaded = False
_BUILTIN_MODULES = (
    "safemeta.algorithms.inner.trpo",
    "safemeta.algorithms.inner.trpolag",
    "safemeta.algorithms.inner.cpo",
    "safemeta.algorithms.inner.crpo",
    "safemeta.algorithms.inner.ppo",
    "safemeta.algorithms.inner.ppolag",
    "safemeta.algorithms.inner.pidlag",
    "safemeta.algorithms.inner.p3o",
    "safemeta.algorithms.inner.focops",
    "safemeta.algorithms.outer.fomaml",
    "safemeta.algorithms.outer.pooled",
    "safemeta.algorithms.outer.no_meta",
    "safemeta.algorithms.outer.dco_cpo",
    "safemeta.algorithms.outer.dco_trpo",
    "safemeta.algorithms.outer.fomaml_safe",
    "safemeta.algorithms.outer.meta_srl",
    "safemeta.algorithms.outer.reptile",
    "safemeta.envs.tiny_nav",
    "safemeta.envs.circle",
    "safemeta.envs.button",
    "safemeta.envs.goal",
    "safemeta.envs.nav2d_hazard",
    "safemeta.envs.tabular_gridworld",
    "safemeta.envs.safety_gym_families",
    "safemeta.envs.safety_gym_plain",
    "safemeta.algorithms.meta_srl.tabular_learner",
    "safemeta.algorithms.meta_srl.baselines",
    "safemeta.presets",
)


def load_builtins() -> None:
    """Import the built-in entries and the ``safemeta.plugins`` entry points (once)."""
    global _builtins_loaded, _current_source
    if _builtins_loaded:
        return
    _builtins_loaded = True
    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)
    for ep in entry_points(group="safemeta.plugins"):
        _current_source = f"entry point {ep.name}"
        try:
            target = ep.load()
            if callable(target):
                target()
        finally:
            _current_source = "builtin"


loaded_plugins: list[str] = []  # what load_plugin imported, in order (Ray workers import the same)


def load_recorded_plugins(plugins: list[str]) -> list[str]:
    """Load the plugins a run recorded (its ``run.json``); returns those that cannot be loaded any more (a file
    that moved or vanished, a module that no longer imports), for the caller to name if the run needs them."""
    missing = []
    for spec in plugins:
        if spec in loaded_plugins:
            continue
        if (spec.endswith(".py") or Path(spec).is_absolute()) and not Path(spec).is_file():
            missing.append(spec)
            continue
        try:
            load_plugin(spec)
        except (UserError, ImportError):
            missing.append(spec)
    return missing


def load_plugin(spec: str) -> None:
    """Import a user module by dotted name or file path so that its ``register_*`` calls run."""
    global _current_source
    load_builtins()
    if spec.endswith(".py") or Path(spec).exists():
        spec = str(Path(spec).resolve())
    if spec in loaded_plugins:
        return
    _current_source = f"plugin {spec}"
    try:
        path = Path(spec)
        if spec.endswith(".py") or path.exists():
            if not path.is_file():
                raise UserError(f"Plugin file '{spec}' does not exist.")
            mod_name = f"safemeta_plugin_{path.stem}"
            module_spec = importlib.util.spec_from_file_location(mod_name, path)
            if module_spec is None or module_spec.loader is None:
                raise UserError(f"Plugin '{spec}' is not an importable Python file.")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[mod_name] = module
            module_spec.loader.exec_module(module)
        else:
            try:
                importlib.import_module(spec)
            except ModuleNotFoundError as e:
                if e.name and spec.startswith(e.name):
                    raise UserError(f"Plugin module '{spec}' cannot be imported: no module named '{e.name}'. "
                                    "Pass a dotted module name on PYTHONPATH or a path to a .py file.") from None
                raise
        loaded_plugins.append(spec)
    finally:
        _current_source = "builtin"
