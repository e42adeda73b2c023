"""The typed configuration of a run.

Sections are dataclasses; fields declare their type and, through `spec`, their valid range. Solver,
updater and family hyperparameters live under ``inner_cfg.<name>``, ``outer_cfg.<name>`` and
``env_cfg.<name>``, each validated against the ``Config`` class of the registered entry, so a preset
can carry tuned values for every inner solver it supports and ``--inner`` picks one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


def spec(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
         lt: float | None = None, pattern: str | None = None, doc: str = "") -> Any:
    """A dataclass field with a valid range (numbers) or a regular expression its value must match in full
    (strings) checked by the validator."""
    meta = {k: v for k, v in {"ge": ge, "gt": gt, "le": le, "lt": lt, "pattern": pattern, "doc": doc}.items()
            if v not in (None, "")}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class PolicyConfig:
    """Gaussian MLP actor pi_theta."""

    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: Literal["tanh", "relu", "elu"] = "tanh"
    init_log_std: float = spec(0.0, doc="initial log standard deviation of the Gaussian (OmniSafe's 0; chosen by "
                                        "measurement, benchmarks/README.md 'Learning signal')")
    obs_normalize: bool = spec(True, doc="running mean / std normalization of observations (safemeta.rollout.obs_norm)")
    obs_clip: float = spec(5.0, gt=0, doc="clip of the normalized observations")


@dataclass
class CriticConfig:
    """Reward and cost critics V_R, V_C and their GAE settings."""

    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: Literal["tanh", "relu", "elu"] = "tanh"
    lr: float = spec(3e-3, gt=0, doc="Adam learning rate of the critic fits")
    epochs: int = spec(10, ge=0, doc="passes over the batch's shuffled samples per fit (0: no fitting)")
    minibatch_size: int = spec(256, ge=0, doc="samples per task in one Adam step (0: the whole batch)")
    max_minibatches: int = spec(40, ge=0, doc="at most this many Adam steps per fit, so a large batch is "
                                "fitted on a subsample at a bounded cost (0: no cap)")
    meta_max_minibatches: int = spec(200, ge=0, doc="the same cap for the fit of the critics' initialization on the "
                                     "meta-policy's pooled rollouts (one network pair, not one per task)")
    gamma: float = spec(0.99, ge=0, le=1, doc="reward discount")
    lam: float = spec(0.95, ge=0, le=1, doc="GAE lambda for reward")
    cost_gamma: float = spec(0.99, ge=0, le=1)
    cost_lam: float = spec(0.95, ge=0, le=1)
    cost_shaping_horizon: int = spec(0, ge=0, doc="H of CPO's cost shaping (Achiam et al. 2017, Sec. 6.3): the "
                                     "constraint is on C + coeff * min(1, c_t + ... + c_{t+H-1}); 0 is off "
                                     "(safemeta.rollout.cost_shaping)")
    cost_shaping_coeff: float = spec(1.0, ge=0, doc="coeff of the cost-shaping bonus")


@dataclass
class TrainerConfig:
    """The meta-training loop."""

    iters: int = spec(50, ge=0, doc="meta-iterations")
    tasks_per_iter: int = spec(8, ge=1, doc="M, tasks sampled per meta-iteration")
    adapt_steps: int = spec(1, ge=0, doc="K, inner steps per task during meta-training")
    envs_per_task: int = spec(8, ge=1)
    episodes_per_env: int = spec(1, ge=1, doc="rollout length = episodes_per_env * horizon")
    eval_every: int = spec(10, ge=0, doc="meta-test every N iterations (0: only at the end)")
    checkpoint_every: int = spec(10, ge=1)
    keep_checkpoints: int = spec(3, ge=1)
    num_threads: int = spec(1, ge=1, doc="torch CPU threads (fixed so runs are reproducible)")
    device: str = "cpu"
    compile_collection: bool = spec(
        False, doc="collect with torch.compile for families whose step is also a pure function (point-goal, "
                   "point-circle, car-circle-hazard): 1.4-3.5x faster collection, 1.1-1.9x faster iterations, after a "
                   "compile per batch shape (45-100 s the first time on one core); numbers agree with eager collection "
                   "within float rounding, and resets draw their start poses once per 8 steps "
                   "(safemeta.rollout.compiled). Other families collect eagerly")
    executor: Literal["local", "ray"] = spec("local", doc="where per-task adaptation runs (safemeta.training.executor)")
    shards: int = spec(1, ge=1, doc="the iteration's tasks split into this many shards, each with its own envs "
                                    "and random stream; results depend on shards, never on executor or workers")
    ray_address: str = spec("", doc="Ray cluster to join ('' starts a local Ray with this machine's cores)")
    ray_workers: int = spec(0, ge=0, doc="Ray actors (0: one per shard)")
    ray_retries: int = spec(3, ge=0, doc="restarts of a dead Ray actor, and retries of its unfinished shard")


@dataclass
class EvalConfig:
    """Meta-test (README "Meta-test protocol"): held-out tasks (split test) at the test cost limit, K fine-tuning
    steps on a fixed env-step budget each, and after every step the handed-out policy scored on fresh episodes."""

    tasks: int = spec(16, ge=1, doc="held-out tasks (split test); boards use at least 16")
    adapt_steps: int = spec(3, ge=0, doc="K fine-tuning steps (each preset states its paper's: Meta-CPO 5, "
                                         "C-MAML 10, Meta-SRL 5)")
    envs_per_task: int = spec(8, ge=1, doc="envs of each fine-tuning step's batch")
    episodes_per_env: int = spec(1, ge=1, doc="episodes per env of each fine-tuning step's batch")
    episodes: int = spec(16, ge=1, doc="fresh evaluation episodes per task scoring the handed-out policy after "
                                       "each step (never the batches it trained on)")
    inner: str = spec("", doc="the fine-tuning solver: '' the run's own; a registered inner solver name fine-tunes "
                              "every row with it at the family's settings (the common-solver view)")
    multipliers: Literal["inherit", "fresh"] = spec(
        "inherit", doc="inherit: the solver's state starts where meta-training left it where the method learned one "
                       "(C-MAML's meta lambda, pretrained's lambda, Meta-SRL's step size); fresh: its defaults")
    critics: Literal["inherit", "fresh"] = spec(
        "inherit", doc="inherit: task critics start from the critics' initialization carried by meta-training; "
                       "fresh: from a random init")
    seed: int = spec(1000, ge=0, doc="seed of the held-out task draw")
    twin: bool = spec(False, doc="meta-test on the family's Safety-Gymnasium twin (MuJoCo) instead, the policy seeing "
                                 "its built-in observations computed from the MuJoCo state (the reality gap; "
                                 "point-circle -> sg-point-circle)")


@dataclass
class LogConfig:
    wandb: bool = False
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    wandb_project: str = "safemeta"
    tensorboard: bool = spec(False, doc="also write TensorBoard event files into RUN_DIR/tensorboard (offline)")
    progress: bool = True


@dataclass
class Config:
    algo: str
    inner: str
    outer: str
    env: str
    seed: int = spec(0, ge=0)
    variant: str = spec("", pattern=r"[a-z0-9][a-z0-9_-]*|", doc="a name for a variant of the preset, e.g. an "
                        "ablation ('no-eta'): it changes nothing in training, but keeps the variant's runs, store "
                        "records and board rows apart from the preset's ('c_maml.no-eta / trpolag')")
    out: str = "runs"
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    inner_cfg: dict[str, Any] = field(default_factory=dict)
    outer_cfg: dict[str, Any] = field(default_factory=dict)
    env_cfg: dict[str, Any] = field(default_factory=dict)

    @property
    def algo_id(self) -> str:
        """The algo with its variant, as boards and folder names show it: ``c_maml`` or ``c_maml.no-eta``."""
        return f"{self.algo}.{self.variant}" if self.variant else self.algo

    @property
    def cell_name(self) -> str:
        """``<algo_id>-<inner>-<env>``: the folder of this cell's runs (under ``out``) and store records."""
        return f"{self.algo_id}-{self.inner}-{self.env}"

    @property
    def inner_params(self) -> Any:
        """Hyperparameters of the active inner solver."""
        return self.inner_cfg[self.inner]

    @property
    def outer_params(self) -> Any:
        return self.outer_cfg[self.outer]

    @property
    def env_params(self) -> Any:
        return self.env_cfg[self.env]
