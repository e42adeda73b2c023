"""safemeta: safe meta-reinforcement learning behind one trainer.

Public API: `train`, `resume`, `Run`, `resolve_config`, `load_config`, and the registries in
`safemeta.registry` (``inner``, ``outer``, ``algo``, ``env``).
"""
from safemeta.api import Run, resume, train
from safemeta.config.loader import load_config, resolve_config

__all__ = ["Run", "train", "resume", "resolve_config", "load_config"]
__version__ = "0.1.0"
