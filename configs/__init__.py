"""YAML configuration shipped with safemeta: ``defaults.yaml``, presets in ``algos/``, env overlays in ``envs/``."""
