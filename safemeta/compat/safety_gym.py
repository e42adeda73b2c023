"""Import safety-gymnasium (and omnisafe) on Python 3.11.

Since Python 3.11, ``dataclasses`` rejects any field default whose class is
unhashable (``__hash__ is None``) -- its proxy for "mutable" -- with
``ValueError: mutable default <class 'numpy.ndarray'> for field color is not
allowed: use default_factory``.  safety-gymnasium 1.0.0 declares
``color: np.array = COLOR[...]`` on its asset dataclasses (geoms ``Apples``,
``Buttons``, ``Circle``, ``Goal``, ``Hazards``, ``Oranges``, ``Pillars``,
``Sigwalls``, ``Walls``; free geoms ``PushBox``, ``Vases``; mocap
``Gremlins``), so ``import safety_gymnasium`` fails.

The fix wraps ``dataclasses._get_field`` (the internal function that builds
each ``Field`` and raises the error; ``_process_class`` looks it up as a
module global on every call) only while the import runs: an ndarray default,
bare or inside ``field(default=...)``, becomes ``default_factory=arr.copy``, so
each instance gets its own copy.  Nothing else changes, and the original is
restored in ``finally``.  Wrapping the public ``dataclasses.field`` instead
would also catch bare defaults, but it leaks (modules running
``from dataclasses import field`` during the import keep the wrapper) and
misses ``field(default=arr)`` calls bound before the patch.
The patch is process-global while active, so avoid defining dataclasses
concurrently in other threads.

omnisafe imports safety_gymnasium too, so use ``import_omnisafe()`` rather
than ``import omnisafe``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
from collections.abc import Iterator
from types import ModuleType

import numpy as np

_CACHE: dict[str, ModuleType] = {}


@contextlib.contextmanager
def ndarray_defaults_as_factories() -> Iterator[None]:
    """Within the block, turn ndarray dataclass defaults into copying ``default_factory``."""
    original = dataclasses._get_field

    def _get_field(cls, a_name, *args, **kwargs):
        default = getattr(cls, a_name, None)
        if isinstance(default, np.ndarray):
            setattr(cls, a_name, dataclasses.field(default_factory=default.copy))
        elif isinstance(default, dataclasses.Field) and isinstance(default.default, np.ndarray):
            default.default_factory, default.default = default.default.copy, dataclasses.MISSING
        return original(cls, a_name, *args, **kwargs)

    dataclasses._get_field = _get_field
    try:
        yield
    finally:
        dataclasses._get_field = original


def _import_patched(name: str) -> ModuleType:
    if name not in _CACHE:
        try:
            with ndarray_defaults_as_factories():
                _CACHE[name] = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            raise ImportError(
                f"cannot import {name!r} ({exc}); install the pinned stack with `make venv`"
            ) from exc
    return _CACHE[name]


def import_safety_gymnasium() -> ModuleType:
    """Return the ``safety_gymnasium`` module, imported under the dataclass patch."""
    return _import_patched("safety_gymnasium")


def import_omnisafe() -> ModuleType:
    """Return the ``omnisafe`` module; it imports safety_gymnasium, so it needs the patch too."""
    import_safety_gymnasium()
    return _import_patched("omnisafe")
