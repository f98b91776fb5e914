"""`python -m looprec experiment NAME [--preset P] [key=value ...] [--resume RUN_DIR]`, and
`python -m looprec analyze RUN_DIR [--max-loops N] [--margin-loops T] [--halt-loops C] [--policy SPEC ...]`.

Bad input (unknown experiment, preset or key, ill-typed or impossible values, missing data) stops with one
line `error: ...` and exit code 2, before the run folder is created when it can be checked that early.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import time

from looprec import config as C
from looprec import compile_cache, runs


RESUMABLE = re.compile(r"train\.(steps|max_minutes)|models\.\w+\.steps|eval\.\w+")


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    raise C.ConfigError(message)


def load_experiment(name: str):
  if not name.isidentifier():
    raise C.ConfigError(f"unknown experiment {name!r}")
  try:
    return importlib.import_module(f"experiments.{name}")
  except ModuleNotFoundError as e:
    if e.name in (f"experiments.{name}", "experiments"):
      raise C.ConfigError(f"unknown experiment {name!r}") from None
    raise


def resolve(module, preset: str | None, overrides: list[str]):
  """The preset's config with overrides applied, validated."""
  preset = preset or module.DEFAULT_PRESET
  if preset not in module.PRESETS:
    raise C.ConfigError(f"unknown preset {preset!r} for {module.__name__} (have {', '.join(module.PRESETS)})")
  cfg = C.override(module.PRESETS[preset](), overrides)
  module.validate(cfg)
  return preset, cfg


def run_experiment(name: str, preset: str | None, overrides: list[str], runs_root: str, resume: str | None):
  from looprec import sharding, train  # pylint: disable=import-outside-toplevel  (jax is slow to import)
  sharding.maybe_initialize_distributed()
  import jax  # pylint: disable=import-outside-toplevel
  main_process = jax.process_index() == 0
  module = load_experiment(name)
  if resume:
    config_path = os.path.join(resume, "config.json")
    if not os.path.isfile(config_path):
      raise C.ConfigError(f"--resume {resume!r}: no config.json there")
    saved = runs.read_json(config_path)
    if saved.get("experiment") != name:
      raise C.ConfigError(f"--resume {resume!r} is a run of {saved.get('experiment')!r}, not {name!r}")
    changing = [o for o in overrides if not RESUMABLE.fullmatch(o.partition("=")[0])]
    if changing:
      raise C.ConfigError(f"--resume can change only step budgets and evaluation settings, not {changing[0]!r}")
    preset, cfg = saved["preset"], C.override(C.from_dict(module.Config, saved["config"]), overrides)
    module.validate(cfg)
    run_dir = os.path.realpath(resume)
  else:
    preset, cfg = resolve(module, preset, overrides)
    when = sharding.same_on_all_processes(int(time.time()))
    run_dir = runs.make_run_dir(runs_root, name, preset, when, create=main_process)
  if main_process:
    runs.write_json(os.path.join(run_dir, "config.json"),
                    {"experiment": name, "preset": preset, "config": C.to_dict(cfg)})
  start = time.time()
  try:
    with train.stop_on_signals():
      body = module.run(cfg, run_dir)
  except train.Interrupted as e:
    print(f"interrupted: {e}; resume with: python -m looprec experiment {name} --resume {run_dir}",
          file=sys.stderr)
    return 130
  results = {"experiment": name, "preset": preset, "wall_seconds": time.time() - start, **body}
  path = os.path.join(run_dir, "results.json")
  if main_process:
    runs.write_json(path, results)
    print(f"results: {path}")
  return 0


def main(argv=None) -> int:
  parser = _Parser(prog="looprec", description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", required=True)
  exp = sub.add_parser("experiment", help="resolve a preset, apply overrides, train and evaluate")
  exp.add_argument("name")
  exp.add_argument("overrides", nargs="*", help="dotted.key=value")
  exp.add_argument("--preset", default=None)
  exp.add_argument("--runs-dir", default=os.environ.get("LOOPREC_RUNS", "runs"))
  exp.add_argument("--resume", default=None, help="a run folder to continue")
  ana = sub.add_parser("analyze", help="loop sweep, adaptive halting and overthinking margins of a run's models")
  ana.add_argument("run")
  ana.add_argument("--max-loops", type=int, default=None, help="sweep R = 1..N (default: the run's eval.max_loops)")
  ana.add_argument("--margin-loops", type=int, default=50, help="margins for loops t = 1..T")
  ana.add_argument("--halt-loops", type=int, default=16, help="the halting cap")
  ana.add_argument("--policy", nargs="+", default=None, help="name[:key=value,...] (default: every policy)")
  try:
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or args.command == "analyze"]
    if stray:
      raise C.ConfigError(f"unrecognized arguments: {' '.join(stray)}")
    if args.command == "experiment":
      compile_cache.enable()
      return run_experiment(args.name, args.preset, args.overrides + extra, args.runs_dir, args.resume)
    if args.command == "analyze":
      from looprec import analysis  # pylint: disable=import-outside-toplevel  (jax is slow to import)
      path = analysis.analyze(args.run, args.max_loops, args.policy, args.halt_loops, args.margin_loops)
      print(f"analysis: {path}")
  except C.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0
