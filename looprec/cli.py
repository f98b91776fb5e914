"""`python -m looprec experiment NAME [--preset P] [key=value ...] [--resume RUN_DIR] [--show-config]` (`experiment
--help` lists the experiments, presets and kinds), and
`python -m looprec analyze RUN_DIR [--max-loops N] [--margin-loops T] [--halt-loops C] [--policy SPEC ...]
[--training-free window=a:b,substeps=K,damping=B[,model=NAME]]`, and
`python -m looprec import-checkpoint PATH --experiment NAME [--preset P] [--model M] --out RUN [key=value ...]`,
`python -m looprec summarize --out results/NAME.json RUN [RUN ...]`, and `python -m looprec tables [--check]`.

Bad input (unknown experiment, preset or key, ill-typed or impossible values, missing data, a runs folder that
cannot be written, a checkpoint that does not fit the data) stops with one line `error: ...` and exit code 2,
before the run folder is created when it can be checked that early. Exit codes: 0 done, 2 bad input or a disk
error, 3 a NaN / Inf in training (the newest checkpoint is finite), 130 stopped by SIGINT, 143 by SIGTERM (both
after a checkpoint; a second Ctrl-C stops at once, without one), 1 anything else (a bug: a traceback), among them
a ConfigError raised after the inputs were checked (`experiment.Bug`).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import traceback

from looprec.files import OneLineParser, UsageError
from looprec import config as C
from looprec import compile_cache, experiment


DESCRIPTION = ("Recurrent-depth (looped) transformers: run an experiment, analyze a run folder, import an official "
               "checkpoint, summarize runs into results/, regenerate the docs' tables.")
RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")


def python_command() -> str:
  """This python and `-m looprec`, as the user can type it again: relative to the working folder when inside it."""
  rel = os.path.relpath(sys.executable)
  exe = sys.executable if rel.startswith("..") else rel if os.sep in rel else os.path.join(".", rel)
  return f"{exe} -m looprec"


def one_line(doc: str | None, width: int = 120) -> str:
  """The first sentence of a docstring's first paragraph; cut before its first `: `, ` (` or `; ` when longer than width."""
  text = " ".join((doc or "").strip().split("\n\n")[0].split())
  first = re.split(r"(?<=\.)\s(?=[A-Z])", text, maxsplit=1)[0].rstrip(".")
  return first if len(first) <= width else re.split(r":\s| \(|;\s", first, maxsplit=1)[0][:width]


def measured(name: str, preset: str) -> str:
  """`; measured: N s per seed (results/NAME_PRESET.json, C CPUs)` where results/ has a summary of the preset as it
  stands (a summary of runs with overrides, e.g. a shorter budget, times another setting: nothing)."""
  path = os.path.join(RESULTS, f"{name}_{preset}.json")
  try:
    with open(path) as f:
      summary = json.load(f)
    wall, machine, overrides = summary["aggregate"]["wall_seconds"], summary["machine"], summary["overrides"]
  except (OSError, ValueError, KeyError):
    return ""
  if overrides:
    return ""
  machine = machine[0] if isinstance(machine, list) else machine
  low, high = round(wall["min"]), round(wall["max"])
  return (f"; measured {low if low == high else f'{low}-{high}'} s per seed on {machine.get('cpu_count')} CPUs "
          f"(results/{name}_{preset}.json)")


def catalog() -> str:
  """What `experiment --help` lists: each experiment with its presets (one line each, and the measured wall time
  where results/ has it), and the model kinds."""
  from looprec import models  # pylint: disable=import-outside-toplevel,unused-import  (registers the kinds)
  lines = ["experiments and their presets (--preset; * the default):"]
  for name in experiment.names():
    module = experiment.load(name)
    lines.append(f"  {name}: {one_line(module.__doc__)}")
    for preset, make in module.PRESETS.items():
      star = "*" if preset == module.DEFAULT_PRESET else " "
      lines.append(f"    {star}{preset}: {one_line(make.__doc__)}{measured(name, preset)}")
  lines.append("model kinds (models.NAME.model=\"kind=...\", or model.kind=... for every model):")
  lines += [f"  {kind}: {one_line(sys.modules[k.model.__module__].__doc__)}" for kind, k in C.KINDS.items()]
  lines.append("see the resolved config and which models each override reaches: --show-config")
  return "\n".join(lines)


def run_experiment(name: str, preset: str | None, overrides: list[str], runs_root: str, resume: str | None) -> int:
  from looprec import train  # pylint: disable=import-outside-toplevel  (jax is slow to import)
  again = f"{python_command()} experiment {name} --resume"
  try:
    run_dir = experiment.run(name, preset, overrides, runs_root, resume)
  except train.Interrupted as e:
    print(f"interrupted: {e}; resume with: {again} {e.run_dir}", file=sys.stderr)
    return 128 + (e.signum or signal.SIGINT)
  except KeyboardInterrupt as e:  # a second Ctrl-C (experiment.StoppedAtOnce once the run folder exists)
    where = getattr(e, "run_dir", None)
    print("\ninterrupted: a second Ctrl-C stopped at once, without a checkpoint" +  # below a progress bar's line
          (f"; resume {where} from its last checkpoint with: {again} {where}" if where else ""), file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)  # at once: a checkpoint writer's threads would print tracebacks as the interpreter shuts down
  except train.NonFinite as e:
    print(f"error: {e}", file=sys.stderr)
    return 3
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_index() == 0:
    print(f"results: {os.path.join(run_dir, 'results.json')}")
  return 0


def show_config(name: str, preset: str | None, overrides: list[str], resume: str | None) -> str:
  """`experiment NAME --show-config`: experiment.show_config of the config a run (or a resume) would use."""
  if resume:
    _, module, preset, cfg = experiment.read_run_config(resume)
    cfg = C.override(cfg, overrides)
  else:
    module = experiment.load(name)
    preset, cfg = experiment.resolve(module, preset, overrides)
  module.validate(cfg)
  return experiment.show_config(cfg, preset, overrides)


def make_parser(epilog: str | None = None) -> OneLineParser:
  """The command line: experiment, analyze, import-checkpoint, summarize, tables; epilog: `experiment --help`'s
  list of experiments, presets and kinds (catalog, which imports every experiment: only when asked for)."""
  parser = OneLineParser(prog="looprec", description=DESCRIPTION)
  sub = parser.add_subparsers(dest="command", required=True)
  exp = sub.add_parser("experiment", help="resolve a preset, apply overrides, train and evaluate",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=epilog)
  exp.add_argument("name", nargs="?", help="the experiment (listed below)")
  exp.add_argument("overrides", nargs="*", help="dotted.key=value, optional (e.g. train.steps=500)")
  exp.add_argument("--preset", default=None, help="the preset (listed below; default: the experiment's *)")
  exp.add_argument("--runs-dir", default=os.environ.get("LOOPREC_RUNS", "runs"))
  exp.add_argument("--resume", default=None, help="a run folder to continue")
  exp.add_argument("--show-config", action="store_true",
                   help="print the resolved config, each model's step budget and which models each override "
                        "reaches; run nothing")
  ana = sub.add_parser("analyze", help="loop sweep, adaptive halting and overthinking margins of a run's models")
  ana.add_argument("run")
  ana.add_argument("--max-loops", type=int, default=None, help="sweep R = 1..N (default: the run's eval.max_loops)")
  ana.add_argument("--margin-loops", type=int, default=50, help="margins for loops t = 1..T")
  ana.add_argument("--halt-loops", type=int, default=16, help="the halting cap")
  ana.add_argument("--policy", nargs="+", default=None, help="name[:key=value,...] (default: every policy)")
  ana.add_argument("--training-free", default=None, metavar="SPEC",
                   help="loop layers a..b-1 of the trained models at inference, K damped sub-steps, output "
                        "B g(h_in) + (1-B) h_K: window=a:b,substeps=K,damping=B[,model=NAME] (K=6, B=0.5 default)")
  imp = sub.add_parser("import-checkpoint", help="an official PyTorch checkpoint as a run folder `analyze` reads")
  imp.add_argument("path", help="a .pt/.pth/.bin state_dict (or training checkpoint) or a .safetensors file")
  imp.add_argument("--experiment", required=True, help="depth_extrap | systematicity")
  imp.add_argument("--preset", default="paper")
  imp.add_argument("--model", default="looped", help="which of the preset's models the checkpoint is")
  imp.add_argument("--trained-hop", type=int, default=0, help="the curriculum hop it reached (default: the last)")
  imp.add_argument("--out", required=True, help="the run folder to create")
  summ = sub.add_parser("summarize", help="a results summary (results/*.json) from run folders, one per seed")
  summ.add_argument("runs", nargs="+")
  summ.add_argument("--out", required=True)
  summ.add_argument("--train-commit", default=None,
                    help="the looprec commit that trained runs whose results.json records none")
  summ.add_argument("--extend", default=None, help="an earlier summary of the same setting whose runs to keep")
  tab = sub.add_parser("tables", help="regenerate the results tables of README.md and docs/ from results/")
  tab.add_argument("--check", action="store_true", help="exit 1 naming each table that differs; write nothing")
  return parser


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  asks_help = argv[:1] == ["experiment"] and bool({"-h", "--help"} & set(argv))
  parser = make_parser(catalog() if asks_help else None)
  try:
    args, extra = parser.parse_known_args(argv)
    no_overrides = args.command in ("analyze", "summarize", "tables")
    stray = [a for a in extra if a.startswith("-") or "=" not in a or no_overrides]
    if stray:
      raise C.ConfigError(f"unrecognized arguments: {' '.join(stray)}")
    if args.command == "experiment":
      if not args.name:
        raise UsageError(f"experiment needs a NAME, one of {', '.join(experiment.names())} (--help lists their "
                         "presets)")
      if args.show_config:
        print(show_config(args.name, args.preset, args.overrides + extra, args.resume))
        return 0
      compile_cache.enable()
      return run_experiment(args.name, args.preset, args.overrides + extra, args.runs_dir, args.resume)
    if args.command == "import-checkpoint":
      from looprec import importer  # pylint: disable=import-outside-toplevel
      out = importer.import_run(args.path, args.experiment, args.preset, extra, args.out, args.model,
                                args.trained_hop)
      print(f"run: {out}")
    if args.command == "summarize":
      from looprec import summary  # pylint: disable=import-outside-toplevel
      command = " ".join(["python -m looprec summarize --out", args.out,
                          *(["--extend", args.extend] if args.extend else []), *args.runs])
      print(f"summary: {summary.write(args.runs, args.out, command, args.train_commit, args.extend)}")
    if args.command == "tables":
      from looprec import tables  # pylint: disable=import-outside-toplevel
      differing = tables.update_docs(check=args.check)
      print("\n".join(("differs: " if args.check else "rewrote: ") + d for d in differing) or "tables: up to date")
      return 1 if differing and args.check else 0
    if args.command == "analyze":
      from looprec import analysis  # pylint: disable=import-outside-toplevel  (jax is slow to import)
      path = analysis.analyze(args.run, args.max_loops, args.policy, args.halt_loops, args.margin_loops,
                              args.training_free)
      print(f"analysis: {path}")
  except experiment.Bug:
    traceback.print_exc()
    return 1
  except (C.ConfigError, UsageError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except OSError as e:  # a disk error (full, read-only, removed) while writing the run folder
    print(f"error: disk error: {e.strerror or e}" + (f" ({e.filename})" if e.filename else ""), file=sys.stderr)
    return 2
  return 0
