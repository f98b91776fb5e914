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
import pkgutil
import re
import sys
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
  # the paper preset's departures from the official code that no config field can state (the report prints them)
  deviations: str = ""
  # dotted field (or a prefix of fields, or "*": every field) -> why this preset differs there from the paper
  # preset; the report's list of deviations is computed (`deviations`), these are its reasons
  reasons: dict[str, str] = dataclasses.field(default_factory=dict)

  def model_cfg(self, name: str) -> ModelConfig:
    """The model config of models[name]: the shared one with that model's depth and its `model` changes."""
    run = self.models[name]
    try:
      return C.override(dataclasses.replace(self.model, n_layers=run.n_layers), run.model_overrides())
    except ConfigError as e:
      raise ConfigError(f"models.{name}.model: {e}") from None

  def kind(self, name: str) -> str:
    """models[name]'s model.kind (the default kind where the config leaves it empty)."""
    from looprec import models  # pylint: disable=import-outside-toplevel,unused-import  (registers the kinds)
    return self.model_cfg(name).kind or next(iter(C.KINDS))

  def build_model(self, name: str, vocab_size: int, evaluating: bool = False):
    """models[name]'s model; evaluating: the one that evaluates it (its model.eval_dtype)."""
    from looprec import models  # pylint: disable=import-outside-toplevel  (jax is slow to import)
    model_cfg = self.model_cfg(name)
    return models.build(model_cfg.for_eval() if evaluating else model_cfg, vocab_size)


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


def names() -> list[str]:
  """The experiments there are: the modules of the `experiments` package, sorted."""
  try:
    package = importlib.import_module("experiments")
  except ModuleNotFoundError:
    return []
  return sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_"))


def load(name: str) -> Experiment:
  """The experiment module `experiments.<name>`; ConfigError if there is none (naming those there are),
  TypeError if it lacks a member of the contract (REQUIRED)."""
  unknown = ConfigError(f"unknown experiment {name!r} (have {C.choices(name, names()) or 'none'})")
  if not name.isidentifier():
    raise unknown
  try:
    module = importlib.import_module(f"experiments.{name}")
  except ModuleNotFoundError as e:
    if e.name in (f"experiments.{name}", "experiments"):
      raise unknown from None
    raise
  missing = [m for m in REQUIRED if not hasattr(module, m)]
  if missing:
    raise TypeError(f"experiments/{name}.py lacks {', '.join(missing)} of the contract (looprec.experiment.Experiment)")
  return module


def resolve(module: Experiment, preset: str | None, overrides: typing.Sequence[str] = ()):
  """(preset, the preset's config with overrides applied, validated)."""
  preset = preset or module.DEFAULT_PRESET
  if preset not in module.PRESETS:
    raise ConfigError(f"unknown preset {preset!r} for {module.__name__.rpartition('.')[2]} (have "
                      f"{C.choices(preset, module.PRESETS)})")
  cfg = C.override(module.PRESETS[preset](), overrides)
  module.validate(cfg)
  return preset, cfg


def override_reach(cfg: ExperimentConfig, item: str) -> tuple[list[str], list[str]]:
  """(the models an override `key=value` reaches, `name (why not)` for each it does not): `train.steps` skips a
  model with its own budget (models.NAME.steps), a shared `model.KEY` a model whose own `model` string sets KEY,
  `models.NAME.*` reaches only NAME."""
  key = item.partition("=")[0]
  reached, missed = [], []
  for name, mrun in cfg.models.items():
    own = dict(o.partition("=")[::2] for o in mrun.model_overrides())
    if key.startswith("models.") and key.split(".")[1] != name:
      continue
    if key == "train.steps" and mrun.steps:
      missed.append(f"{name} (its own models.{name}.steps={mrun.steps})")
    elif key.startswith("model.") and key[len("model."):] in own:
      missed.append(f"{name} (its own models.{name}.model sets {key[len('model.'):]}={own[key[len('model.'):]]})")
    else:
      reached.append(name)
  return reached, missed


def override_notes(cfg: ExperimentConfig, overrides: typing.Sequence[str]) -> list[str]:
  """One `note:` line per override that leaves a model as it was (override_reach)."""
  notes = []
  for item in overrides:
    reached, missed = override_reach(cfg, item)
    if missed:
      notes.append(f"note: {item} does not change {', '.join(missed)}" +
                   (f"; it applies to {', '.join(reached)}" if reached else ""))
  return notes


def show_config(cfg: ExperimentConfig, preset: str, overrides: typing.Sequence[str]) -> str:
  """The resolved config as JSON, then each model's kind, depth, recurrence and step budget (and where the
  budget comes from), then which models each override reached: what `experiment NAME --show-config` prints."""
  lines = [C.dumps(cfg), "", f"preset {preset}; models:"]
  for name, mrun in cfg.models.items():
    budget = f"models.{name}.steps" if mrun.steps else "train.steps"
    lines.append(f"  {name}: kind={cfg.kind(name)}, n_layers={mrun.n_layers}, "
                 f"recurrence={mrun.recurrence}, steps={mrun.steps or cfg.train.steps} ({budget})")
  lines.append("overrides:" if overrides else "overrides: none")
  for item in overrides:
    reached, missed = override_reach(cfg, item)
    lines.append(f"  {item}: applies to {', '.join(reached) or 'no model'}" +
                 (f"; not to {', '.join(missed)}" if missed else ""))
  return "\n".join(lines)


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


class StoppedAtOnce(KeyboardInterrupt):
  """A second Ctrl-C: the run stopped at once, without a checkpoint; run_dir continues from its last one."""

  def __init__(self, run_dir: str):
    super().__init__(run_dir)
    self.run_dir = run_dir


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
  """Trains (or resumes) each model of cfg.models in order; yields (name, the model that evaluates it (its
  model.eval_dtype), train.TrainResult). A ConfigError of train_model (restoring a checkpoint) is an InputError."""
  from looprec import train  # pylint: disable=import-outside-toplevel
  for i, (name, mrun) in enumerate(cfg.models.items()):
    model, evaluating = (cfg.build_model(name, task.vocab.size, e) for e in (False, True))
    try:
      result = train.train_model(name, model, mrun.rec, mrun.steps or cfg.train.steps, cfg.train, task, mesh,
                                 run_dir, cfg.seed + 1000 * i, C.to_dict(cfg), eval_model=evaluating)
    except ConfigError as e:
      raise InputError(str(e)) from None
    yield name, evaluating, result


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
    """The model that evaluates model `name` (in its evaluation dtype, model.eval_dtype)."""
    return self.cfg.build_model(name, self.task.vocab.size, evaluating=True)

  def stage_hops(self, name: str) -> list[int]:
    """The curriculum stages whose pass checkpoint model `name` has (train.stage_checkpoints)."""
    from looprec import checkpoint  # pylint: disable=import-outside-toplevel
    return checkpoint.stage_hops(self.run_dir, name)

  def stage(self, name: str, hop: int) -> tuple:
    """(params, meta) of model `name` when it passed curriculum stage `hop` (meta: its step and gate accuracy);
    ConfigError naming the stages there are when it has none at that hop."""
    from looprec import checkpoint, sharding  # pylint: disable=import-outside-toplevel
    found = checkpoint.restore_params(checkpoint.stage_directory(self.run_dir, name),
                                      checkpoint.task_fingerprint(self.task),
                                      sharding.loading_mesh(self.cfg.train.fsdp), step=hop)
    if found is None:
      raise ConfigError(f"{self.run_dir!r}: model {name!r} has no checkpoint at stage {hop} (it has "
                        f"{self.stage_hops(name) or 'none'})")
    return found


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
  run folder to resume) on SIGTERM/SIGINT, after a checkpoint; StoppedAtOnce on a second SIGINT (whatever
  exception then unwinds the run). Prints a `note:` on stderr for each override that leaves a model as it was
  (override_notes)."""
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
  for note in override_notes(cfg, overrides) if main_process else ():
    print(note, file=sys.stderr)
  if main_process:
    runs.write_json(os.path.join(run_dir, "config.json"), {"experiment": name, "preset": preset,
                                                           "config": C.to_dict(cfg)})
  start = time.time()
  with train.stop_on_signals() as stop:
    try:
      with inputs_checked():
        body = module.run(cfg, run_dir)
    except BaseException as e:  # after a second SIGINT, e.g. the interrupted checkpoint writer's RuntimeError
      if isinstance(e, KeyboardInterrupt) or stop.at_once:
        raise StoppedAtOnce(run_dir) from None
      raise
  if main_process:
    runs.write_json(os.path.join(run_dir, "results.json"),
                    {"experiment": name, "preset": preset, "wall_seconds": time.time() - start,
                     "commit": runs.code_commit(), "machine": runs.machine(), **body})
  return run_dir


# ------------------------------------------------------------------ deviations from the paper preset, computed


def _flat(tree, prefix: str = "") -> dict:
  """Dotted key -> value of a config's leaves (to_dict), without its reasons and deviations."""
  if not isinstance(tree, dict):
    return {prefix[:-1]: tree}
  return {k: v for key, value in tree.items() if key not in ("reasons", "deviations")
          for k, v in _flat(value, f"{prefix}{key}.").items()}


def _reason(reasons: dict, key: str):
  """The reason for key: its own, else its longest prefix's, else "*"'s; None when there is none."""
  for cut in [key] + [key.rsplit(".", n)[0] for n in range(1, key.count(".") + 1)] + ["*"]:
    if cut in reasons:
      return reasons[cut]
  return None


def deviations(cfg: ExperimentConfig, paper: ExperimentConfig) -> list[tuple]:
  """(field, value here, the paper preset's value, reason or None) for every field where cfg differs from the paper
  preset; a model only one of them trains is one field, `models.<name>` (its value "—" where absent)."""
  mine, theirs = (_flat(C.to_dict(c)) for c in (cfg, paper))
  only = lambda a, b: {k.split(".")[1] for k in a if k.startswith("models.")} - {
      k.split(".")[1] for k in b if k.startswith("models.")}
  alone = {f"models.{name}": side for side, names in (("here", only(mine, theirs)), ("paper", only(theirs, mine)))
           for name in names}
  rows = [(f"models.{name}", *(("trained", "—") if side == "here" else ("—", "trained")))
          for name, side in ((k.split(".")[1], v) for k, v in sorted(alone.items()))]
  for key in sorted(mine.keys() | theirs.keys()):
    if ".".join(key.split(".")[:2]) not in alone and mine.get(key, "—") != theirs.get(key, "—"):
      rows.append((key, mine.get(key, "—"), theirs.get(key, "—")))
  return [(*row, _reason(cfg.reasons, row[0])) for row in sorted(rows)]


def paper_preset(module: Experiment) -> ExperimentConfig:
  """The paper preset an experiment's presets are compared with: its own `paper` preset, else its `PAPER`."""
  return (module.PRESETS.get("paper") or module.PAPER)()


def because(why: str, *keys: str) -> dict:
  """{key: why} for each key: one reason for several fields of a preset's `reasons`."""
  return {key: why for key in keys}


def unexplained(cfg: ExperimentConfig, paper: ExperimentConfig) -> tuple[list, list]:
  """(fields that differ from the paper preset without a reason, reasons that name no differing field)."""
  rows = deviations(cfg, paper)
  stale = [k for k in cfg.reasons if k != "*" and not any(r[0] == k or r[0].startswith(k + ".") for r in rows)]
  return [r[0] for r in rows if r[3] is None], stale


def deviations_text(cfg: ExperimentConfig, paper: ExperimentConfig) -> str:
  """Markdown: the fields where cfg differs from the paper preset, each with its values and reason, then the paper
  preset's own departures from the official code."""
  cell = lambda v: v if v in ("—", "trained") else f"{v:g}" if isinstance(v, float) else repr(v)
  grouped = {}  # reason -> its fields' cells, in field order
  for key, here, there, why in deviations(cfg, paper):
    grouped.setdefault(why or "no reason given (an override?)", []).append(f"`{key}` {cell(here)} ({cell(there)})")
  lines = ["| field: here (paper preset) | why |", "|---|---|"] + [
      f"| {', '.join(cells)} | {why} |" for why, cells in grouped.items()]
  return "\n".join((lines if grouped else ["None: every field has the paper preset's value."]) + [
      "", "Where the paper preset itself departs from the official code: " + paper.deviations])
