"""The experiment contract (`Experiment`: what the library calls on an experiment module), and what every
experiment shares: presets resolved and validated, models trained in order, run folders written and loaded.

    from looprec import experiment
    run_dir = experiment.run("depth_extrap", "smoke", ["train.steps=100"], runs_root="/tmp/runs")
    run = experiment.load_run(run_dir)          # config, task, and every model's params
    model, params = run.model("looped"), run.params["looped"]
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import os
import re
import time
import typing

from looprec import config as C
from looprec import runs
from looprec.config import ConfigError, EvalConfig, ModelConfig, ModelRun, TrainConfig

# Overrides a resumed run may apply: step budgets, evaluation settings and the parameters' layout (train.fsdp).
RESUMABLE = re.compile(r"train\.(steps|max_minutes|debug_nan_step|fsdp)|models\.\w+\.steps|eval\.\w+")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """What every experiment's config holds; experiments subclass it with their own `data` type."""

  seed: int = 0
  data: typing.Any = None  # the task's data config (ChainDataConfig, CompositionDataConfig)
  model: ModelConfig = ModelConfig()
  train: TrainConfig = TrainConfig()
  eval: EvalConfig = EvalConfig()
  models: dict[str, ModelRun] = dataclasses.field(default_factory=dict)
  deviations: str = ""  # how the preset departs from the paper's recipe, for the report

  def model_cfg(self, name: str) -> ModelConfig:
    """The model config of models[name]: the shared one with that model's depth and its `model` changes."""
    run = self.models[name]
    try:
      return C.override(dataclasses.replace(self.model, n_layers=run.n_layers), run.model_overrides())
    except ConfigError as e:
      raise ConfigError(f"models.{name}.model: {e}") from None

  def build_model(self, name: str, vocab_size: int):
    from looprec import models  # pylint: disable=import-outside-toplevel  (jax is slow to import)
    return models.build(self.model_cfg(name), vocab_size)


class Experiment(typing.Protocol):
  """Everything the library calls on an experiment, a module `experiments/<name>.py` (a module implements a
  Protocol by its top-level names). `load` checks that it has REQUIRED; the library reads the optional others
  through `member`, which supplies their DEFAULTS.
  A module with a "smoke" preset runs end to end in the default test suite (tests/test_experiments_smoke.py)."""

  Config: type[ExperimentConfig]  # narrows `data` to its task's data config
  PRESETS: dict[str, typing.Callable[[], ExperimentConfig]]  # name -> the preset's Config
  DEFAULT_PRESET: str

  def validate(self, cfg: ExperimentConfig) -> None:
    """Cross-field checks, raising ConfigError before anything is written."""

  def run(self, cfg: ExperimentConfig, run_dir: str) -> dict:
    """Trains and evaluates (`train_models`); returns the body of results.json."""

  def eval_splits(self, task, max_hop: int) -> dict:
    """split -> examples (with `n_answers`, as `task.eval_split` and `task.probes` give them) that `python -m
    looprec analyze` evaluates."""

  def analysis_models(self, cfg: ExperimentConfig) -> dict:
    """name -> (model config, the trained model whose params it runs): what `analyze` analyzes by default."""

  def analyze_run(self, cfg: ExperimentConfig, run_dir: str, restored: dict, max_loops: int | None) -> str:
    """The experiment's own `python -m looprec analyze` in place of the default (`analysis.analyze`: sweep,
    halting and margins of `analysis_models` on `eval_splits`); restored: model -> (params, checkpoint meta);
    returns the path of the analysis.json it writes."""


REQUIRED = ("Config", "PRESETS", "DEFAULT_PRESET", "validate", "run", "eval_splits")


def trained_models(cfg: ExperimentConfig) -> dict:
  """The default `analysis_models`: every entry of cfg.models, as trained."""
  return {name: (cfg.model_cfg(name), name) for name in cfg.models}


DEFAULTS = {"analysis_models": trained_models, "analyze_run": None}  # None: analysis.analyze's own


def member(module: Experiment, name: str):
  """An optional member of the contract: the module's own, else its default (DEFAULTS)."""
  return getattr(module, name, DEFAULTS[name])


def load(name: str) -> Experiment:
  """The experiment module `experiments.<name>`; ConfigError if there is none, TypeError if it lacks a member
  of the contract (REQUIRED)."""
  if not name.isidentifier():
    raise ConfigError(f"unknown experiment {name!r}")
  try:
    module = importlib.import_module(f"experiments.{name}")
  except ModuleNotFoundError as e:
    if e.name in (f"experiments.{name}", "experiments"):
      raise ConfigError(f"unknown experiment {name!r}") from None
    raise
  missing = [m for m in REQUIRED if not hasattr(module, m)]
  if missing:
    raise TypeError(f"experiments/{name}.py lacks {', '.join(missing)} of the contract (looprec.experiment.Experiment)")
  return module


def resolve(module: Experiment, preset: str | None, overrides: typing.Sequence[str] = ()):
  """(preset, the preset's config with overrides applied, validated)."""
  preset = preset or module.DEFAULT_PRESET
  if preset not in module.PRESETS:
    raise ConfigError(f"unknown preset {preset!r} for {module.__name__} (have {', '.join(module.PRESETS)})")
  cfg = C.override(module.PRESETS[preset](), overrides)
  module.validate(cfg)
  return preset, cfg


def read_run_config(run_dir: str):
  """(experiment name, module, preset, config) of a run folder; ConfigError if it is not one."""
  path = os.path.join(run_dir, "config.json")
  if not os.path.isfile(path):
    raise ConfigError(f"{run_dir!r} is not a run folder (no config.json)")
  saved = runs.read_json(path)
  module = load(saved["experiment"])
  return saved["experiment"], module, saved["preset"], C.from_saved(module.Config, saved["config"], path)


class InputError(ConfigError):
  """Bad input found once a run began: a checkpoint that does not fit the data, or none readable."""


class Bug(RuntimeError):
  """A ConfigError raised after the inputs were checked: a bug, not bad input (the CLI shows its traceback and
  exits 1)."""


@contextlib.contextmanager
def inputs_checked():
  """The work after every input was checked: a ConfigError raised inside, other than an InputError, is a Bug."""
  try:
    yield
  except InputError:
    raise
  except ConfigError as e:
    raise Bug(f"ConfigError after the inputs were checked (a bug, not bad input): {e}") from e


def train_models(cfg: ExperimentConfig, task, mesh, run_dir: str):
  """Trains (or resumes) each model of cfg.models in order; yields (name, model, train.TrainResult). A ConfigError
  of train_model (restoring a checkpoint) is an InputError."""
  from looprec import train  # pylint: disable=import-outside-toplevel
  for i, (name, mrun) in enumerate(cfg.models.items()):
    model = cfg.build_model(name, task.vocab.size)
    try:
      result = train.train_model(name, model, mrun.rec, mrun.steps or cfg.train.steps, cfg.train, task, mesh,
                                 run_dir, cfg.seed + 1000 * i, C.to_dict(cfg))
    except ConfigError as e:
      raise InputError(str(e)) from None
    yield name, model, result


@dataclasses.dataclass
class Run:
  """A run folder's config, task and final parameters (`load_run`)."""

  run_dir: str
  name: str  # the experiment
  module: Experiment
  cfg: ExperimentConfig
  params: dict  # model -> params of its latest checkpoint
  meta: dict  # model -> that checkpoint's metadata (curriculum stage, curves, ...)

  @functools.cached_property
  def task(self):
    from looprec import tasks  # pylint: disable=import-outside-toplevel
    return tasks.make_task(self.cfg.data)

  def model(self, name: str):
    return self.cfg.build_model(name, self.task.vocab.size)


def load_run(run_dir: str) -> Run:
  """Every model's newest readable checkpoint in a run folder (an unreadable step falls back to the next older
  one, said on stderr), its params laid out on `sharding.loading_mesh(train.fsdp)`; ConfigError if a model has
  none, or if its checkpoint does not fit the data."""
  from looprec import checkpoint, sharding  # pylint: disable=import-outside-toplevel
  name, module, _, cfg = read_run_config(run_dir)
  run = Run(run_dir, name, module, cfg, {}, {})
  fingerprint = checkpoint.task_fingerprint(run.task)
  mesh = sharding.loading_mesh(cfg.train.fsdp)
  for model in cfg.models:
    restored = checkpoint.restore_params(os.path.join(run_dir, "checkpoints", model), fingerprint, mesh)
    if restored is None:
      raise ConfigError(f"{run_dir!r}: no checkpoint of model {model!r}")
    run.params[model], run.meta[model] = restored
  return run


def _new_run_dir(runs_root: str, name: str, preset: str, main_process: bool) -> str:
  """Process 0 creates the run folder; every process gets its name (the time and -i suffix of process 0)."""
  from looprec import sharding  # pylint: disable=import-outside-toplevel
  when = sharding.same_on_all_processes(int(time.time()))
  index, error = -1, None
  if main_process:
    try:
      index = runs.index_of(runs.make_run_dir(runs_root, name, preset, when))
    except ConfigError as e:
      error = e
  index = sharding.same_on_all_processes(index)
  if error or index < 0:
    raise error or ConfigError("process 0 could not create the run folder")
  return runs.run_dir_name(runs_root, name, preset, when, index)


def run(name: str, preset: str | None = None, overrides: typing.Sequence[str] = (), runs_root: str = "runs",
        resume: str | None = None) -> str:
  """Trains and evaluates experiment `name` in a new run folder under runs_root (or continues `resume`, where
  overrides may change only step budgets and evaluation settings); writes config.json and results.json and
  returns the run folder. ConfigError on bad input, before the folder is created (InputError: a checkpoint found
  later that does not fit); Bug for any other ConfigError once the experiment runs; train.Interrupted (with the
  run folder to resume) on SIGTERM/SIGINT, after a checkpoint."""
  from looprec import sharding, train  # pylint: disable=import-outside-toplevel  (jax is slow to import)
  sharding.maybe_initialize_distributed()
  import jax  # pylint: disable=import-outside-toplevel
  main_process = jax.process_index() == 0
  module = load(name)
  if resume:
    saved_name, module, preset, cfg = read_run_config(resume)
    if saved_name != name:
      raise ConfigError(f"--resume {resume!r} is a run of {saved_name!r}, not {name!r}")
    changing = [o for o in overrides if not RESUMABLE.fullmatch(o.partition("=")[0])]
    if changing:
      raise ConfigError(f"--resume can change only step budgets and evaluation settings, not {changing[0]!r}")
    cfg = C.override(cfg, overrides)
    module.validate(cfg)
    run_dir = os.path.realpath(resume)
  else:
    preset, cfg = resolve(module, preset, overrides)
    run_dir = _new_run_dir(runs_root, name, preset, main_process)
  if main_process:
    runs.write_json(os.path.join(run_dir, "config.json"), {"experiment": name, "preset": preset,
                                                           "config": C.to_dict(cfg)})
  start = time.time()
  with train.stop_on_signals(), inputs_checked():
    body = module.run(cfg, run_dir)
  if main_process:
    runs.write_json(os.path.join(run_dir, "results.json"),
                    {"experiment": name, "preset": preset, "wall_seconds": time.time() - start,
                     "commit": runs.code_commit(), "machine": runs.machine(), **body})
  return run_dir
