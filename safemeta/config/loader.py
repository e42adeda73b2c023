"""Layered configuration: defaults -> env overlay -> preset -> the preset's file for the env ->
``--config FILE`` -> flags -> ``--set``.

The env overlay (``configs/envs/<env>.yaml``) gives a family's budget; the preset
(``configs/algos/<algo>.yaml``) a method's settings, which win over it (Meta-CPO's K = 5 local steps);
``configs/algos/<algo>/<env>.yaml``, when present, the method's settings for that family.

Each layer is a nested dict with a source name (a file path, "--set" or "command line"). Merging
records which source set each key, so a validation error names the key, the file it came from and
the closest valid keys. Values given with ``--set a.b=value`` are parsed as YAML scalars/lists.
"""
from __future__ import annotations

import re
import types
import typing
import warnings
from dataclasses import MISSING, fields, is_dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import yaml

from safemeta import registry
from safemeta.config.schema import Config
from safemeta.errors import UserError, suggest

Layer = tuple[str, dict]
CONFIG_DIR = files("safemeta.configs")


def read_yaml(path: str | Path, what: str = "config file") -> dict:
    p = Path(str(path))
    if not p.is_file():
        raise UserError(f"The {what} '{path}' does not exist.")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"The {what} '{path}' is not valid YAML: {e}") from None
    if _is_cyclic(data):
        raise UserError(f"The {what} '{path}' has a YAML alias that contains itself.")
    if not isinstance(data, dict):
        raise UserError(f"The {what} '{path}' must hold a mapping of keys, not {type(data).__name__}.")
    return data


def _is_cyclic(value: Any, seen: frozenset = frozenset()) -> bool:
    """True if a YAML value contains itself (``&a [*a]``), which no config key can hold."""
    if isinstance(value, (list, dict)):
        if id(value) in seen:
            return True
        inner = seen | {id(value)}
        return any(_is_cyclic(v, inner) for v in (value.values() if isinstance(value, dict) else value))
    return False


def parse_set(items: list[str]) -> dict:
    """``["a.b=1", "c=[1,2]"]`` -> nested dict (values parsed as YAML)."""
    pairs = []
    for item in items:
        if "=" not in item:
            raise UserError(f"--set expects KEY=VALUE (e.g. trainer.iters=20), got '{item}'.")
        key, raw = item.split("=", 1)
        if not key or any(not part for part in key.split(".")):
            raise UserError(f"--set '{item}' has an empty key (expected KEY=VALUE, e.g. trainer.iters=20).")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        if _is_cyclic(value):
            raise UserError(f"--set '{item}': the value is a YAML alias that contains itself.")
        pairs.append((key, value))
    return nest(pairs)


def nest(pairs: list[tuple[str, object]] | dict) -> dict:
    """Dotted keys -> nested dict: ``[("a.b", 1)]`` -> ``{"a": {"b": 1}}``."""
    out: dict = {}
    for key, value in (pairs.items() if isinstance(pairs, dict) else pairs):
        key = str(key)
        if not key or any(not part for part in key.split(".")):
            raise UserError(f"--set has an empty key in '{key}'.")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            if isinstance(node.get(part), str):  # env=point-circle then env.test.r_c=..: a named section
                node[part] = {"name": node[part]}
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set sets '{key}' below a key that already has a value.")
        node[parts[-1]] = value
    return out


def merge(layers: list[Layer]) -> tuple[dict, dict[str, str]]:
    """Deep-merge layers; return the merged dict and dotted key -> source of its last writer."""
    merged: dict = {}
    source: dict[str, str] = {}

    def walk(dst: dict, src: dict, prefix: str, name: str) -> None:
        for k, v in src.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and isinstance(dst.get(k), dict):
                walk(dst[k], v, key + ".", name)
            else:
                dst[k] = _copy(v)
            source[key] = name
            if isinstance(v, dict):
                for sub in _dotted(v, key + "."):
                    source[sub] = name

    for name, data in layers:
        walk(merged, data, "", name)
    return merged, source


def _copy(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_copy(x) for x in v]
    return v


def _dotted(d: dict, prefix: str) -> list[str]:
    out = []
    for k, v in d.items():
        out.append(prefix + str(k))
        if isinstance(v, dict):
            out += _dotted(v, f"{prefix}{k}.")
    return out


class Validator:
    def __init__(self, source: dict[str, str]):
        self.source = source

    def where(self, key: str) -> str:
        s = self.source.get(key.split("[")[0])
        return f" (set in {s})" if s else ""

    def build(self, cls: type, data: Any, prefix: str) -> Any:
        if not isinstance(data, dict):
            raise UserError(f"'{prefix.rstrip('.')}' must be a mapping of keys{self.where(prefix.rstrip('.'))}, "
                            f"got {data!r}.")
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in fields(cls) if f.init}
        for k in data:
            if k not in known:
                key = f"{prefix}{k}"
                raise UserError(f"Unknown config key '{key}'{self.where(key)}.{suggest(str(k), known)} "
                                f"Valid keys of '{prefix.rstrip('.') or 'the top level'}': {', '.join(known)}.")
        kwargs = {}
        for name, f in known.items():
            key = f"{prefix}{name}"
            if name in data:
                kwargs[name] = self.value(hints[name], data[name], key, f.metadata)
            elif f.default is MISSING and f.default_factory is MISSING:
                raise UserError(f"Missing config key '{key}'.")
        return cls(**kwargs)

    def value(self, tp: Any, v: Any, key: str, meta: Any = None) -> Any:
        origin = typing.get_origin(tp)
        bad = lambda what: UserError(f"Config key '{key}'{self.where(key)}: expected {what}, got {v!r}.")  # noqa: E731
        if is_dataclass(tp):
            return self.build(tp, v, key + ".")
        if origin is Literal:
            choices = typing.get_args(tp)
            if v not in choices:
                raise UserError(f"Config key '{key}'{self.where(key)}: {v!r} is not one of "
                                f"{', '.join(map(str, choices))}.")
            return v
        if origin in (typing.Union, types.UnionType):
            args = typing.get_args(tp)
            if v is None and type(None) in args:
                return None
            for a in args:
                if a is type(None):
                    continue
                try:
                    return self.value(a, v, key, meta)
                except UserError:
                    continue
            raise bad(" or ".join(getattr(a, "__name__", str(a)) for a in args))
        if origin is tuple:
            if not isinstance(v, (list, tuple)):
                raise bad("a list")
            args = typing.get_args(tp)
            if len(args) == 2 and args[1] is not Ellipsis:  # a fixed pair: a [low, high] range
                if len(v) != 2:
                    raise bad("a [low, high] pair")
                out = tuple(self.value(a, x, f"{key}[{i}]") for i, (a, x) in enumerate(zip(args, v)))
                if out[0] > out[1]:
                    raise UserError(f"Config key '{key}'{self.where(key)}: the range [{out[0]}, {out[1]}] is empty "
                                    "(low > high).")
                for bound in out:
                    self.check_range(bound, key, meta or {})
                return out
            item = args[0] if args else Any
            return tuple(self.value(item, x, f"{key}[{i}]") for i, x in enumerate(v))
        if origin is dict:
            if not isinstance(v, dict):
                raise bad("a mapping")
            return dict(v)
        if tp is Any:
            return v
        if tp is bool:
            if not isinstance(v, bool):
                raise bad("true or false")
            return v
        if tp is int:
            if isinstance(v, bool) or not isinstance(v, int):
                raise bad("an integer")
            out: Any = v
        elif tp is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise bad("a number")
            out = float(v)
        elif tp is str:
            if not isinstance(v, str):
                raise bad("a string")
            pattern = (meta or {}).get("pattern")
            if pattern is not None and not re.fullmatch(pattern, v):
                raise UserError(f"Config key '{key}'{self.where(key)}: {v!r} is not a valid value (it must match "
                                f"{pattern}).")
            return v
        else:
            raise bad(getattr(tp, "__name__", str(tp)))
        self.check_range(out, key, meta or {})
        return out

    def check_range(self, v: float, key: str, meta: dict) -> None:
        rules = {"ge": (">=", lambda b: v >= b), "gt": (">", lambda b: v > b),
                 "le": ("<=", lambda b: v <= b), "lt": ("<", lambda b: v < b)}
        for op, (words, ok) in rules.items():
            if op in meta and not ok(meta[op]):
                raise UserError(f"Config key '{key}'{self.where(key)}: {v} is out of range (must be {words} {meta[op]}).")


def _named_sections(v: Validator, data: dict, section: str, reg: registry.Registry, active: str) -> dict:
    raw = data.get(section) or {}
    if not isinstance(raw, dict):
        raise UserError(f"'{section}' must be a mapping of {reg.kind} names to settings{v.where(section)}.")
    out = {}
    for name, params in raw.items():
        if name not in reg:
            raise UserError(f"'{section}.{name}'{v.where(f'{section}.{name}')} names no registered {reg.kind}. "
                            f"Valid names: {', '.join(reg.names())}.{suggest(str(name), reg.names())}")
        out[name] = v.build(reg.get(name).Config, params or {}, f"{section}.{name}.")
    if active not in out:
        out[active] = reg.get(active).Config()
    return out


def build_config(data: dict, source: dict[str, str]) -> Config:
    v = Validator(source)
    for key, reg in (("algo", registry.algo), ("inner", registry.inner), ("outer", registry.outer), ("env", registry.env)):
        if key not in data:
            raise UserError(f"Missing config key '{key}'.")
        if not isinstance(data[key], str):
            raise UserError(f"Config key '{key}'{v.where(key)}: expected a name, got {data[key]!r}.")
        reg.entry(data[key])  # unknown name -> error listing the valid ones
    plain = {k: x for k, x in data.items() if k not in ("inner_cfg", "outer_cfg", "env_cfg")}
    cfg = v.build(Config, plain, "")
    cfg.inner_cfg = _named_sections(v, data, "inner_cfg", registry.inner, cfg.inner)
    cfg.outer_cfg = _named_sections(v, data, "outer_cfg", registry.outer, cfg.outer)
    cfg.env_cfg = _named_sections(v, data, "env_cfg", registry.env, cfg.env)
    if cfg.eval.inner and cfg.eval.inner not in registry.inner:
        names = registry.inner.names()
        raise UserError(f"Config key 'eval.inner'{v.where('eval.inner')}: '{cfg.eval.inner}' names no registered inner "
                        f"solver. Valid: '' (each run's own solver), {', '.join(names)}."
                        f"{suggest(cfg.eval.inner, names)}")
    return cfg


def family_solver_config(env: str, inner: str) -> Any:
    """Settings of inner solver ``inner`` on family ``env`` with no preset: its defaults under the family's
    overlay (``configs/envs/<env>.yaml``, where it sets ``inner_cfg.<inner>``). The common-solver view of the
    meta-test fine-tunes every row with these, so that only the initialization differs between rows."""
    layers: list[Layer] = [(str(CONFIG_DIR / "defaults.yaml"), read_yaml(str(CONFIG_DIR / "defaults.yaml")))]
    overlay = CONFIG_DIR / "envs" / f"{env}.yaml"
    if Path(str(overlay)).is_file():
        layers.append((str(overlay), read_yaml(str(overlay))))
    data, source = merge(layers)
    settings = (data.get("inner_cfg") or {}).get(inner) or {}
    return Validator(source).build(registry.inner.get(inner).Config, settings, f"inner_cfg.{inner}.")


def resolve_config(user_layers: list[Layer]) -> Config:
    """Resolve the full config from the user's layers (``--config`` file, flags, ``--set``).

    ``env``, ``inner`` and ``outer`` name the active entries; given a mapping instead (``--set
    env.test.r_c=[2.0,3.0]``), the mapping is settings of the active entry, i.e. ``env_cfg.<env>``.
    """
    user_layers, sections = _split_sections(user_layers)
    defaults: Layer = (str(CONFIG_DIR / "defaults.yaml"), read_yaml(str(CONFIG_DIR / "defaults.yaml")))
    first, _ = merge([defaults, *user_layers])
    preset = registry.algo.get(str(first.get("algo")))
    preset_layer = (preset.source, preset.settings())
    second, _ = merge([defaults, preset_layer, *user_layers])
    env = str(second.get("env"))
    layers = [defaults]
    for overlay in (CONFIG_DIR / "envs" / f"{env}.yaml", None, preset.family_file(env)):
        if overlay is None:
            layers.append(preset_layer)
        elif Path(str(overlay)).is_file():
            layers.append((str(overlay), read_yaml(str(overlay))))
    names, _ = merge([*layers, *user_layers])
    extra = [(src, {f"{key}_cfg": {names.get(key): settings}}) for src, key, settings in sections]
    data, source = merge([*layers, *user_layers, *extra])
    return build_config(data, source)


def _split_sections(layers: list[Layer]) -> tuple[list[Layer], list[tuple[str, str, dict]]]:
    """Pull mapping values of ``env`` / ``inner`` / ``outer`` out of the layers (see `resolve_config`)."""
    out, sections = [], []
    for src, data in layers:
        data = dict(data)
        for key in ("env", "inner", "outer"):
            if isinstance(data.get(key), dict):
                settings = dict(data.pop(key))
                if "name" in settings:
                    data[key] = settings.pop("name")
                sections.append((src, key, settings))
        out.append((src, data))
    return out, sections


def load_config(path: str | Path, plugins: list[str] | None = None) -> Config:
    """Load a resolved config saved in a run directory (one saved before a key was renamed is migrated), after
    loading the plugins the run was trained with (``plugins``, from its ``run.json``)."""
    return config_from_dict(read_yaml(path, "saved config"), str(path), plugins)


def run_plugins(run_dir: str | Path) -> list[str]:
    """The plugins a run directory's ``run.json`` records (none for a run from before they were recorded)."""
    import json

    try:
        return list(json.loads((Path(run_dir) / "run.json").read_text()).get("plugins") or [])
    except (OSError, ValueError):
        return []


def config_from_dict(data: dict, source: str, plugins: list[str] | None = None) -> Config:
    """A saved resolved config (a run's ``config.yaml``, a results record's ``config``), migrated and validated;
    errors name ``source``. ``plugins`` are loaded first; one that cannot be loaded any more is named when the
    config needs what it registered."""
    missing = registry.load_recorded_plugins(plugins or [])
    data = migrate_saved(dict(data), source)
    try:
        return build_config(data, {k: source for k in _dotted(data, "")})
    except UserError as e:
        if not missing:
            raise
        raise UserError(f"{e} The run '{source}' was trained with the plugin(s) {', '.join(missing)}, which can no "
                        "longer be loaded (moved or deleted?); load it from its new place with --plugin PATH.") from None


def migrate_saved(data: dict, path: str) -> dict:
    """Saved configs from before issue 16 name ``critic.iters`` (full-batch Adam steps per fit): the same fit is
    ``epochs = iters`` with whole-batch minibatches and no caps, so old runs resume and load as they trained."""
    critic = data.get("critic")
    if isinstance(critic, dict) and "iters" in critic:
        critic = dict(critic)
        iters = critic.pop("iters")
        critic.update({"epochs": iters, "minibatch_size": 0, "max_minibatches": 0, "meta_max_minibatches": 0})
        warnings.warn(f"{path}: critic.iters (before issue 16) read as critic.epochs={iters} with whole-batch "
                      "minibatches and no caps.", stacklevel=3)
        data = {**data, "critic": critic}
    return data


def to_dict(cfg: Any) -> Any:
    if is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, tuple):
        return [to_dict(v) for v in cfg]
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


