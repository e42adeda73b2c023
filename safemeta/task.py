"""Moved to `safemeta.rollout.task` (issue 19's layout). This alias keeps plugins written against the old path
loading; it warns once and forwards every name to the new module."""
import warnings

from safemeta.rollout import task as _moved

warnings.warn("safemeta.task moved to safemeta.rollout.task; import it from there (the old path is deprecated)",
              DeprecationWarning, stacklevel=2)


def __getattr__(name: str):
    return getattr(_moved, name)
