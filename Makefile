# One-command set-up: `make train` and `make test` create .venv and install the pinned stack first.
# Pins: requirements/constraints.txt. Order (DESIGN.md "Dependency facts"): torch==2.13.0 first (the
# local CPU build; a bare `torch` would pull CUDA), then the stack with numpy<2, then the packages whose
# own pins do not install on Python 3.11 (safety-gymnasium, gymnasium-robotics, omnisafe) with --no-deps.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
PIN := -c requirements/constraints.txt
STAMP := $(VENV)/.installed
ARGS ?=

STACK := numpy gymnasium mujoco pettingzoo pygame xmltodict imageio \
	cvxpy cvxpylayers diffcp qpth \
	pandas tensorboard wandb typer seaborn matplotlib moviepy gdown \
	pyyaml rich pytest hypothesis setuptools wheel ray
NODEPS := safety-gymnasium gymnasium-robotics omnisafe

.PHONY: venv train test test-slow list clean-venv

venv: $(STAMP)

$(STAMP): requirements/constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install $(PIN) torch==2.13.0
	$(PIP) install $(PIN) $(STACK)
	$(PIP) install $(PIN) --no-deps $(NODEPS)
	$(PIP) install --no-deps --no-build-isolation -e .
	$(PY) -c "import torch, numpy, cvxpylayers, qpth, safemeta; assert numpy.__version__ < '2'"
	touch $(STAMP)

# The main job: the mission's example, C-MAML with TRPO-Lagrangian inner steps on the default task family
# (point-circle), meta-tested on held-out tasks at the end; ARGS adds or overrides flags (the last one wins).
train: $(STAMP)
	$(VENV)/bin/safemeta train --algo c_maml --inner trpolag $(ARGS)

# The default test suite (fast, a few minutes; includes the tests marked safety_gym).
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(ARGS)

# The learning tests (marked slow: solvers trained to convergence on point-circle / tiny CMDPs). CI runs both.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(ARGS)

list: $(STAMP)
	$(VENV)/bin/safemeta list

clean-venv:
	rm -rf $(VENV)
