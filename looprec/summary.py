"""A results summary: one small JSON per results table, from run folders of one setting and several seeds.

    python -m looprec summarize --out results/depth_extrap_smoke.json RUN_SEED0 RUN_SEED1 [--train-commit SHA]
    python -m looprec summarize --out results/X.json --extend results/X.json RUN_SEED3   # seeds added later

Reads each run folder's config.json, results.json and analysis.json (`python -m looprec analyze RUN` writes it,
also for a run trained by older code; for a variants run it holds the training-free models too). Every run
must be the same experiment, preset and overrides but for `seed` and `data.seed` (SEEDS), which differ. The summary
(schema 1):

    {"schema": 1, "experiment", "preset", "overrides": ["key=value", ...] (the config against the preset's, SEEDS
     left out), "seeds": [...], "max_loops" (R is chosen among 1..eval.max_loops),
     "commands": {"train": [one per run], "analyze": str, "summarize": str},
     "commit": {"train": sha, null or [one per run], "analysis": sha or [one per run]},
     "machine": {"platform", "cpu_count"} or [...],
     "runs": [{"seed", "seed_overrides": ["seed=1", ...], "run", "wall_seconds", "commit", "analysis_commit", "machine",
               "models": {model: metrics}}],
     "aggregate": {"wall_seconds", "models": ...}}   # every number as {"mean", "min", "max"} over the seeds

Metrics per model. Depth tasks (depth_extrap, variants): "train_loops", "n_layers", "trained_max_hop", "steps",
"train_seconds", "hops": {hop: selection.select (r, test, val, oracle_r, oracle)}, "halting": {policy: {hop:
{"accuracy", "mean_loops"}}}, and for decoding "kl": {hop: mean KL(per-loop teacher || policy) per written token}
and "paired": {hop: {"n", "only_teacher", "only_model"}} (test chains only the per-loop teacher / only this policy
decodes right, each at its validation-chosen R; from analysis.json's "correct", where the run's analysis has it).
A decoding run also keeps "policies": {policy: {"bytes_per_token": {R: bytes}, "tokens_per_s": {batch: tokens/s}}}
(per run and aggregated). Systematicity: "train_loops", "n_layers", "steps", "train_seconds", "final":
{split: accuracy at the training R}, "stage_steps": {split: first step >= 0.9 or null} (from training's
results.json), "selected": {test split: selection.select}, "lens": {split of LENS_SPLITS: {reading (answer,
bridge, bridge_at_r1): {n: top-1 rate after the n-th layer of the unrolled depth, all loops}}}. A run's commit
and machine are what its results.json records (`runs.code_commit`, `runs.machine`); runs trained before it
recorded them take --train-commit and this machine. A run's analysis_commit is this checkout's commit (the code
that summarizes, assumed to have analyzed). --extend keeps an earlier summary's runs (same setting, other seeds)
ahead of the new ones, with their commits, so seeds can be added without the earlier run folders.
"""
from __future__ import annotations

import os

from looprec import config as C
from looprec import runs, selection
from looprec.config import ConfigError
from looprec.data import hop_of

SCHEMA = 1
SEEDS = ("seed", "data.seed")  # what may differ between the runs of one summary
LENS_SPLITS = ("test_inferred_iid", "test_inferred_ood")  # the logit lens kept in a systematicity summary
TEACHER = "per_loop"  # a decoding run's model the others are paired with, chain by chain


def _read(run_dir: str, name: str) -> dict:
  path = os.path.join(run_dir, name)
  if not os.path.isfile(path):
    hint = f" (run `python -m looprec analyze {run_dir}`)" if name.endswith("analysis.json") else ""
    raise ConfigError(f"{path}: missing{hint}")
  try:
    return runs.read_json(path)
  except ValueError as e:
    raise ConfigError(f"{path}: not JSON ({e})") from None


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
  return out


def overrides(experiment_name: str, preset: str, saved: dict) -> list[str]:
  """`key=value` for every config value of a run that differs from its preset's, sorted; the SEEDS keys among
  them come last. The preset's prose (`deviations`, `reasons`) is not a setting: a run made before its wording
  changed has the same setting."""
  from looprec import experiment  # pylint: disable=import-outside-toplevel  (imports jax)
  module = experiment.load(experiment_name)
  if preset not in module.PRESETS:
    raise ConfigError(f"preset {preset!r} of {experiment_name!r} no longer exists")
  # saved read back and written again: an older run's model config lists every kind's options, a newer one its own
  base, got = _flat(C.to_dict(module.PRESETS[preset]())), _flat(C.to_dict(C.from_dict(module.Config, saved)))
  fmt = lambda v: v if isinstance(v, str) else "" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
  keys = sorted((k for k in base.keys() | got.keys() if base.get(k) != got.get(k) and k.split(".")[0] not in C.PROSE),
                key=lambda k: (k in SEEDS, k))
  return [f"{k}={fmt(got.get(k))}" for k in keys]


def _upto(accuracy: dict, max_loops: int) -> dict:
  """accuracy[split][R] for R <= max_loops (analysis sweeps may run further, to the halting cap)."""
  return {s: {r: a for r, a in by_r.items() if int(r) <= max_loops} for s, by_r in accuracy.items()}


def _depth_metrics(result: dict, analysis: dict, max_loops: int) -> dict:
  sweep = _upto(analysis["sweep"], max_loops)
  tests = sorted((s for s in sweep if not selection.is_val(s)), key=hop_of)
  return {**{k: result.get(k) for k in ("train_loops", "n_layers", "trained_max_hop", "steps", "train_seconds")},
          "hops": {str(hop_of(s)): selection.select(sweep, s) for s in tests},
          "halting": {pol: {str(hop_of(s)): {k: table[s][k] for k in ("accuracy", "mean_loops")} for s in tests}
                      for pol, table in analysis["halting"].items()},
          **({"kl": analysis["kl"]} if "kl" in analysis else {})}


def _composition_metrics(result: dict, analysis: dict, stages: dict, max_loops: int) -> dict:
  acc = _upto(analysis["accuracy"], max_loops)
  return {**{k: result.get(k) for k in ("train_loops", "n_layers", "steps", "train_seconds")},
          "final": {s: a for s, a in analysis["final"].items() if not selection.is_val(s)},
          "stage_steps": {s: step for s, step in stages.items() if not selection.is_val(s)},
          "selected": {s: selection.select(acc, s) for s in acc if s.startswith("test_")},
          "lens": {s: {reading: {str(i + 1): top1 for i, top1 in enumerate(sum(r["top1_by_layer"], []))}
                       for reading, r in readings.items()}
                   for s, readings in analysis["logit_lens"].items() if s in LENS_SPLITS}}


def run_metrics(run_dir: str, results: dict, analysis: dict, max_loops: int) -> dict:
  """model -> metrics of one run folder (the module docstring), R chosen among 1..max_loops."""
  models = analysis.get("models")
  if not isinstance(models, dict):
    raise ConfigError(f"{os.path.join(run_dir, 'analysis.json')}: no field 'models'")
  out = {}
  for name, a in models.items():
    where = os.path.join(run_dir, "analysis.json")
    try:
      result = results.get("models", {}).get(name, {})
      out[name] = (_depth_metrics(result, a, max_loops) if "sweep" in a
                   else _composition_metrics(result, a, results.get("stages", {}).get(name, {}), max_loops))
    except KeyError as e:
      raise ConfigError(f"{where}: models.{name}: no field {e}") from None
  if TEACHER in models and "correct" in models[TEACHER]:
    for name, metrics in out.items():
      metrics["paired"] = _paired(models[TEACHER]["correct"], out[TEACHER]["hops"], models[name]["correct"],
                                  metrics["hops"])
  return out


def _paired(teacher_correct: dict, teacher_hops: dict, correct: dict, hops: dict) -> dict:
  """hop -> {"n", "only_teacher", "only_model"}: the test chains only the per-loop teacher / only this model gets
  right, each at its own validation-chosen R (hops without a validation split left out)."""
  out = {}
  for split, by_r in correct.items():
    hop = str(hop_of(split))
    if hops[hop]["r"] is None or teacher_hops[hop]["r"] is None:
      continue
    mine, theirs = by_r[str(hops[hop]["r"])], teacher_correct[split][str(teacher_hops[hop]["r"])]
    out[hop] = {"n": len(mine), "only_teacher": sum(a > b for a, b in zip(theirs, mine)),
                "only_model": sum(a > b for a, b in zip(mine, theirs))}
  return out


def aggregate(values: list):
  """Over seeds: numbers -> {"mean", "min", "max"} (None values left out, counted in "missing"), dicts key by key,
  anything else the common value (or the list of values where they differ)."""
  if all(isinstance(v, dict) for v in values):
    keys = list(dict.fromkeys(k for v in values for k in v))
    return {k: aggregate([v.get(k) for v in values]) for k in keys}
  nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
  if nums and len(nums) + values.count(None) == len(values):
    stats = {"mean": sum(nums) / len(nums), "min": min(nums), "max": max(nums)}
    return {**stats, "missing": values.count(None)} if None in values else stats
  return common(values)


def common(values: list):
  """The one value all runs share, or the list of their values."""
  return values[0] if all(v == values[0] for v in values) else values


def _run_entry(run_dir: str, train_commit: str | None) -> tuple[tuple, dict]:
  """((experiment, preset), overrides without SEEDS) and the summary's entry of one run folder; train_commit where
  its results.json records no commit (runs trained before it did)."""
  cfg, results, analysis = (_read(run_dir, f) for f in ("config.json", "results.json", "analysis.json"))
  try:
    setting = (cfg["experiment"], cfg["preset"])
    seed, max_loops = cfg["config"]["seed"], cfg["config"]["eval"]["max_loops"]
    wall = results["wall_seconds"]
  except KeyError as e:
    raise ConfigError(f"{run_dir}: config.json or results.json has no field {e}") from None
  over = overrides(*setting, cfg["config"])
  seeds = [o for o in over if o.partition("=")[0] in SEEDS]
  entry = {"seed": seed, "seed_overrides": seeds, "run": os.path.basename(os.path.realpath(run_dir)),
           "wall_seconds": wall, "max_loops": max_loops, "commit": results.get("commit") or train_commit,
           "analysis_commit": runs.code_commit(),
           "machine": results.get("machine") or runs.machine(),
           "models": run_metrics(run_dir, results, analysis, max_loops),
           **({"policies": results["policies"]} if "policies" in results else {})}
  return (setting, over[:len(over) - len(seeds)]), entry


def _earlier_runs(path: str) -> tuple[tuple, list[dict]]:
  """The setting and the runs of an earlier summary, each run given that summary's training and analysis commits
  and machine where it records none of its own (summaries written before runs carried them)."""
  old = _read(os.path.dirname(path) or ".", os.path.basename(path))
  try:
    setting = ((old["experiment"], old["preset"]), old["overrides"])
    entries = [{"max_loops": old["max_loops"], "machine": old["machine"], "commit": old["commit"]["train"],
                "analysis_commit": old["commit"]["analysis"], **r}
               for r in old["runs"]]
  except (KeyError, TypeError) as e:
    raise ConfigError(f"{path}: no field {e}") from None
  return setting, entries


def summarize(run_dirs: list[str], command: str, train_commit: str | None = None, extend: str | None = None) -> dict:
  """The summary of run folders of one setting, one per seed (the module docstring); with extend, the runs of
  that earlier summary of the same setting come first (seeds added to a table without its old run folders)."""
  first, per_run = _earlier_runs(extend) if extend else (None, [])
  for run_dir in run_dirs:
    setting, entry = _run_entry(run_dir, train_commit)
    first = first or setting
    if setting != first:
      raise ConfigError(f"{run_dir}: experiment, preset or overrides {setting[0] + tuple(setting[1])} differ from "
                        f"the first run's {first[0] + tuple(first[1])}")
    if any(r["seed_overrides"] == entry["seed_overrides"] for r in per_run):
      raise ConfigError(f"{run_dir}: seed {entry['seed']} appears twice "
                        f"({' '.join(entry['seed_overrides']) or 'the preset seeds'})")
    per_run.append(entry)
  max_loops = {r.pop("max_loops") for r in per_run}
  if len(max_loops) > 1:
    raise ConfigError(f"{run_dirs[-1]}: eval.max_loops differs between the runs ({sorted(max_loops)})")
  (name, preset), over = first
  train = f"python -m looprec experiment {name} --preset {preset}"
  commits, machines = [r["commit"] for r in per_run], [r["machine"] for r in per_run]
  analysed = [r["analysis_commit"] for r in per_run]
  return {"schema": SCHEMA, "experiment": name, "preset": preset, "overrides": over,
          "seeds": [r["seed"] for r in per_run], "max_loops": max_loops.pop(),
          "commands": {"train": [" ".join([train, *over, *r["seed_overrides"]]) for r in per_run],
                       "analyze": "python -m looprec analyze RUN", "summarize": command},
          "commit": {"train": common(commits), "analysis": common(analysed)},
          "machine": common(machines),
          "runs": per_run,
          "aggregate": {"wall_seconds": aggregate([r["wall_seconds"] for r in per_run]),
                        "models": aggregate([r["models"] for r in per_run]),
                        **({"policies": aggregate([r["policies"] for r in per_run])}
                           if all("policies" in r for r in per_run) else {})}}


def _rounded(obj):
  """Floats to 6 decimals, all through a JSON tree (stable, short files)."""
  if isinstance(obj, dict):
    return {k: _rounded(v) for k, v in obj.items()}
  if isinstance(obj, list):
    return [_rounded(v) for v in obj]
  return round(obj, 6) if isinstance(obj, float) else obj


def write(run_dirs: list[str], out: str, command: str, train_commit: str | None = None,
          extend: str | None = None) -> str:
  """Writes the summary of run_dirs (after extend's runs) to out (its folder made if missing; floats rounded to 6
  decimals); returns out."""
  summary = _rounded(summarize(run_dirs, command, train_commit, extend))
  try:
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    runs.write_json(out, summary)
  except OSError as e:
    raise ConfigError(f"{out}: cannot write ({e.strerror or e})") from None
  return out
