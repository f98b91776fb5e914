"""`python -m looprec experiment NAME [--preset P] [key=value ...] [--resume RUN_DIR]`, and
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

import os
import signal
import sys
import traceback

from looprec.files import OneLineParser, UsageError
from looprec import config as C
from looprec import compile_cache, experiment


def run_experiment(name: str, preset: str | None, overrides: list[str], runs_root: str, resume: str | None) -> int:
  from looprec import train  # pylint: disable=import-outside-toplevel  (jax is slow to import)
  try:
    run_dir = experiment.run(name, preset, overrides, runs_root, resume)
  except train.Interrupted as e:
    print(f"interrupted: {e}; resume with: python -m looprec experiment {name} --resume {e.run_dir}",
          file=sys.stderr)
    return 128 + (e.signum or signal.SIGINT)
  except KeyboardInterrupt:
    print("interrupted: a second Ctrl-C, stopped at once without a checkpoint; --resume the run folder to "
          "continue from its last checkpoint", file=sys.stderr)
    return 130
  except train.NonFinite as e:
    print(f"error: {e}", file=sys.stderr)
    return 3
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_index() == 0:
    print(f"results: {os.path.join(run_dir, 'results.json')}")
  return 0


def make_parser() -> OneLineParser:
  """The command line: experiment, analyze, import-checkpoint, summarize, tables."""
  parser = OneLineParser(prog="looprec", description=__doc__.splitlines()[0])
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
  parser = make_parser()
  try:
    args, extra = parser.parse_known_args(argv)
    no_overrides = args.command in ("analyze", "summarize", "tables")
    stray = [a for a in extra if a.startswith("-") or "=" not in a or no_overrides]
    if stray:
      raise C.ConfigError(f"unrecognized arguments: {' '.join(stray)}")
    if args.command == "experiment":
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
