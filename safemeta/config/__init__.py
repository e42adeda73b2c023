"""Typed configuration: schema (dataclasses), validation and layered loading."""
from safemeta.config.schema import Config, CriticConfig, EvalConfig, LogConfig, PolicyConfig, TrainerConfig, spec
from safemeta.config.loader import load_config, resolve_config, save_config

__all__ = ["Config", "CriticConfig", "EvalConfig", "LogConfig", "PolicyConfig", "TrainerConfig", "spec",
           "load_config", "resolve_config", "save_config"]
