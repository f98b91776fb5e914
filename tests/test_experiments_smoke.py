"""Every experiment's smoke preset end to end (the experiments in `experiments/` with a `smoke` preset,
discovered), then `python -m looprec analyze` on its run folder: the results contract, analysis.json beside it,
and golden values.

Golden values (tests/golden/<name>_smoke.json: each model's params_sum, steps, stages and every accuracy) pin
what the code computes, so a refactor that should not move results is checked here. A change that moves them on
purpose regenerates them with

    LOOPREC_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -p no:xdist tests/test_experiments_smoke.py

and commits tests/golden/ on its own, in a commit that says why the values moved.

Float32 training is exact on one machine but not across CPUs: XLA compiles its kernels for the host's instruction
set (AVX-512 or AVX2 or older), which changes the rounding, and training amplifies it. A golden file records the
`numerics_fingerprint` of the machine that wrote it; on a machine with the same fingerprint the values must match
exactly, on another within CROSS_MACHINE tolerances (measured: docs/decisions.md, "Golden values across CPUs").
"""
import importlib
import json
import os
import pkgutil
import platform
import subprocess
import sys
import warnings

import numpy as np
import pytest

import experiments
import numerics
from data_gen import composition
from looprec import cli, experiment, runs, selection, summary, tables, tasks

GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
UPDATE = os.environ.get("LOOPREC_UPDATE_GOLDEN") == "1"
GOLDEN_KEYS = ("params_sum", "steps", "stages", "accuracy")
# Between machines whose numerics differ: params_sum (relative) and the mean accuracy gap about 3x, each accuracy 1.6x,
# the largest gaps measured between four kinds of x86 code (docs/decisions.md, "Golden values across CPUs")
CROSS_MACHINE = {"params_sum": 3e-3, "accuracy": 0.2, "mean_accuracy": 0.025}


def discovered() -> list[str]:
  """The experiment modules with a smoke preset."""
  names = [m.name for m in pkgutil.iter_modules(experiments.__path__)]
  return sorted(n for n in names if "smoke" in getattr(importlib.import_module(f"experiments.{n}"), "PRESETS", {}))


def golden_of(results: dict) -> dict:
  """The pinned part of results.json: per model its GOLDEN_KEYS (stages: the model's curriculum stages, or the
  experiment's per-model `stages`; None where there is none)."""
  out = {}
  for name, m in results["models"].items():
    stages = m["stages"] if "stages" in m else results.get("stages", {}).get(name)
    out[name] = {"params_sum": m["params_sum"], "steps": m["steps"], "stages": stages, "accuracy": m["accuracy"]}
  return {"experiment": results["experiment"], "preset": results["preset"], "models": out,
          "numerics": numerics.numerics_fingerprint()}


def compare(got, want, path: str, errors: list, same_machine: bool = True, gaps: list | None = None):
  """Appends `path: got X, golden Y` for every difference: params_sum to rtol 1e-6, other floats to abs 1e-9, or
  on another machine's numerics to the CROSS_MACHINE tolerances (each accuracy gap also to `gaps`)."""
  if isinstance(want, dict) and isinstance(got, dict):
    if set(got) != set(want):
      errors.append(f"{path}: keys {sorted(got)}, golden {sorted(want)}")
    for key in set(got) & set(want):
      compare(got[key], want[key], f"{path}.{key}", errors, same_machine, gaps)
  elif isinstance(want, float) and isinstance(got, (int, float)):
    params = path.endswith("params_sum")
    if same_machine:
      tol = 1e-6 * abs(want) if params else 1e-9
    else:
      tol = CROSS_MACHINE["params_sum"] * abs(want) if params else CROSS_MACHINE["accuracy"]
      if not params and gaps is not None:
        gaps.append(abs(got - want))
    if abs(got - want) > tol:
      errors.append(f"{path}: got {got!r}, golden {want!r}")
  elif got != want:
    errors.append(f"{path}: got {got!r}, golden {want!r}")


def check_golden(name: str, results: dict):
  path = os.path.join(GOLDEN_DIR, f"{name}_smoke.json")
  got = golden_of(results)
  if UPDATE:
    os.makedirs(GOLDEN_DIR, exist_ok=True)
    with open(path, "w") as f:
      json.dump(got, f, indent=1, sort_keys=True)
      f.write("\n")
    return
  assert os.path.isfile(path), f"no golden values for {name!r}: run with LOOPREC_UPDATE_GOLDEN=1 and commit {path}"
  with open(path) as f:
    want = json.load(f)
  same_machine = want.get("numerics") == got["numerics"]
  if not same_machine:
    warnings.warn(f"{path} was written on a machine whose float32 kernels round differently (numerics "
                  f"{want.get('numerics')}, here {got['numerics']}): compared within {CROSS_MACHINE}")
  got, want = ({k: v for k, v in d.items() if k != "numerics"} for d in (got, want))
  errors, gaps = [], []
  compare(got, want, name, errors, same_machine, gaps)
  if gaps and sum(gaps) / len(gaps) > CROSS_MACHINE["mean_accuracy"]:
    errors.append(f"{name}: accuracies differ by {sum(gaps) / len(gaps):.4f} on average, more than "
                  f"{CROSS_MACHINE['mean_accuracy']} (another machine's rounding)")
  assert not errors, (f"{len(errors)} value(s) differ from {path}:\n  " + "\n  ".join(errors[:20]) +
                      "\nChanging a golden value is deliberate: regenerate with LOOPREC_UPDATE_GOLDEN=1 (see this "
                      "file's docstring) and commit tests/golden/ alone, in a commit that says why the values moved.")


def check_contract(name: str, run_dir: str, results: dict):
  """results.json as README states it: what every experiment writes, and every model's accuracy[split][R]."""
  cfg = experiment.read_run_config(run_dir)[3]
  assert results["experiment"] == name and results["preset"] == "smoke"
  assert isinstance(results["wall_seconds"], float) and results["machine"] == runs.machine()
  assert results["commit"] == runs.code_commit()
  assert set(cfg.models) <= set(results["models"])
  splits = None
  for model, m in results["models"].items():
    assert isinstance(m["n_layers"], int) and m["n_layers"] >= 1, model
    assert isinstance(m["train_loops"], str) and isinstance(m["steps"], int), model
    assert isinstance(m["n_params"], int) and isinstance(m["params_sum"], float), model
    splits = splits or set(m["accuracy"])
    assert set(m["accuracy"]) == splits, model
    for by_r in m["accuracy"].values():
      assert list(by_r) == [str(r) for r in range(1, len(by_r) + 1)] and len(by_r) >= cfg.eval.max_loops, model
      assert all(isinstance(a, float) and 0.0 <= a <= 1.0 for a in by_r.values()), model
  for model in cfg.models:
    assert results["models"][model]["steps"] == (cfg.models[model].steps or cfg.train.steps)


def check_analysis(run_dir: str, results: dict):
  """analysis.json has every model of results.json, and its sweep (`sweep` or `accuracy`) agrees with it."""
  with open(os.path.join(run_dir, "analysis.json")) as f:
    analyses = json.load(f)["models"]
  assert set(analyses) == set(results["models"])
  for model, m in results["models"].items():
    sweep = analyses[model].get("sweep") or analyses[model]["accuracy"]
    assert {s: {r: sweep[s][r] for r in by_r} for s, by_r in m["accuracy"].items()} == m["accuracy"], model


def check_depth_extrap(run_dir: str, results: dict):
  assert os.path.realpath(os.path.join(os.path.dirname(run_dir), "latest")) == os.path.realpath(run_dir)
  assert os.path.basename(run_dir).startswith("smoke-")
  assert {"config.json", "results.json", "report.md", "accuracy_hop_by_loops.png", "checkpoints", "tb",
          "margins.png", "halting.md"} <= set(os.listdir(run_dir))
  assert os.listdir(os.path.join(run_dir, "tb", "looped"))
  for m in results["models"].values():
    assert m["train_loops"].startswith(("fixed:", "dynamic:")) and isinstance(m["trained_max_hop"], int)
    assert len(m["accuracy"]) == 10 and all(len(by_r) == 8 for by_r in m["accuracy"].values())  # hops 1..5, R 1..8
    assert {selection.val_split(s) for s in m["accuracy"] if not selection.is_val(s)} <= set(m["accuracy"])


def check_systematicity(run_dir: str, results: dict):
  from experiments import systematicity  # pylint: disable=import-outside-toplevel
  assert {"grokking.png", "logit_lens.png", "report.md", "config.json"} <= set(os.listdir(run_dir))
  r = results
  assert set(r["models"]) == set(r["curves"]) == set(r["stages"]) == set(r["logit_lens"]) == {"looped", "vanilla"}
  with open(os.path.join(run_dir, "analysis.json")) as f:
    analyses = json.load(f)["models"]
  for name, steps in (("looped", 120), ("vanilla", 80)):
    curves = r["curves"][name]
    held_out = {selection.val_split(s) for s in composition.SPLITS if s.startswith("test_")}
    assert set(composition.SPLITS) <= set(curves) and set(curves) - set(composition.SPLITS) <= held_out
    assert all([p[0] for p in points] == list(range(40, steps + 1, 40)) for points in curves.values())
    assert set(r["stages"][name]) == set(curves)
    assert set(r["logit_lens"][name]) == set(systematicity.TWO_HOP)
    loops = 2 if name == "looped" else 1
    for by_target in r["logit_lens"][name].values():
      assert set(by_target) == {"bridge", "answer", "bridge_at_r1"}
      assert len(by_target["bridge"]["top1"]) == len(by_target["answer"]["mrr"]) == loops
    m = r["models"][name]
    assert m["final"] == {s: by_r[str(loops)] for s, by_r in m["accuracy"].items()}
    assert all(len(by_r) == 4 for by_r in m["accuracy"].values())  # R = 1..eval.max_loops
    assert {s: pts[-1][1] for s, pts in curves.items()} == pytest.approx(m["final"])  # the last curve point
    assert analyses[name]["final"] == m["final"] and analyses[name]["logit_lens"] == r["logit_lens"][name]


def check_summary(run_dir: str, results: dict):
  """The run summarizes (results/ schema) and every results-table renderer of its kind renders the summary."""
  got = summary.summarize([run_dir], "cmd")
  assert got["commit"]["train"] == results["commit"] and set(got["aggregate"]["models"]) >= set(results["models"])
  composition_ = all("final" in m for m in got["aggregate"]["models"].values())
  renderers = ((tables.systematicity, tables.systematicity_lens) if composition_
               else (tables.depth_accuracy, tables.depth_by_model, tables.depth_halting))
  if "policies" in results:  # decoding: each policy's costs travel into the summary
    assert got["runs"][0]["policies"] == results["policies"]
    renderers += (tables.decoding_costs,)
  for render in renderers:
    text = render(got, "results/x.json")
    assert text.startswith("| ") and "From `results/x.json`" in text, render.__name__


def check_length_gen(run_dir: str, results: dict):
  """Every split of the task, ID and OOD, swept to eval.max_loops, and the report says which is which."""
  assert {"report.md", "accuracy_hop_by_loops.png", "halting.md"} <= set(os.listdir(run_dir))
  tests = ["atomic", "2hop_test", "3hop_test", "4hop_test", "6hop_test", "8hop_test"]  # lengths 1..4, OOD 6 and 8
  for m in results["models"].values():
    assert set(m["accuracy"]) == set(tests) | {selection.val_split(s) for s in tests} and m["trained_max_hop"] == 4
    assert all(len(by_r) == 6 for by_r in m["accuracy"].values())
  with open(os.path.join(run_dir, "report.md")) as f:
    rows = [line.split("|")[1:5] for line in f if line.startswith("| ") and line[2].isdigit()]
  assert [(int(d), kind.strip()) for d, kind, _, _ in rows] == [(1, "ID"), (2, "ID"), (3, "ID"), (4, "ID"),
                                                                 (6, "OOD"), (8, "OOD")]
  task = tasks.make_task(experiment.read_run_config(run_dir)[3].data)
  for (d, _, _, majority), s in zip(rows, task.splits()):  # parity: the larger of the two answers' shares
    targets = task.eval_split(s.difficulty)["target"]
    assert float(majority) == round(max(np.mean(targets == t) for t in set(targets)), 2) >= 0.5, d


def check_decoding(run_dir: str, results: dict):
  """One entry per cache policy; per_loop is its own teacher (KL 0) and cycle:2 equals it at R <= 2 (two slots
  hold every loop); per_loop's memory grows with R, melt's does not; every policy has tokens/s at batch 1 and 64."""
  assert "report.md" in os.listdir(run_dir)
  models, speed = results["models"], results["policies"]
  assert list(models) == list(speed) == ["per_loop", "first_loop", "last_loop", "cycle:2", "melt"]
  assert set(models["per_loop"]["kl_to_per_loop"].values()) == {0.0}
  for split, by_r in models["per_loop"]["accuracy"].items():
    assert [by_r[r] for r in ("1", "2")] == [models["cycle:2"]["accuracy"][split][r] for r in ("1", "2")], split
  per_loop, flat = speed["per_loop"]["bytes_per_token"], speed["melt"]["bytes_per_token"]
  assert [per_loop[r] / per_loop["4"] for r in ("8", "16", "32")] == [2, 4, 8]
  assert len(set(flat.values())) == 1 and flat["4"] == per_loop["4"] // 4
  assert all(set(s["tokens_per_s"]) == {"1", "64"} and min(s["tokens_per_s"].values()) > 0 for s in speed.values())
  with open(os.path.join(run_dir, "analysis.json")) as f:
    analyses = json.load(f)["models"]
  cap = experiment.read_run_config(run_dir)[3].eval.max_loops
  for policy, a in analyses.items():  # every rule, every split; a split read at the cap throughout is R = cap
    assert set(a["halting"]) == {"kl_entropy_rel", "argmax"}, policy
    for rule, table in a["halting"].items():
      assert set(table) == set(models[policy]["accuracy"]), (policy, rule)
      for split, row in table.items():
        assert 1 <= row["mean_loops"] <= cap and 0.0 <= row["accuracy"] <= 1.0, (policy, rule, split)
        if row["mean_loops"] == cap:
          assert row["accuracy"] == models[policy]["accuracy"][split][str(cap)], (policy, rule, split)


SPECIFIC = {"depth_extrap": check_depth_extrap, "systematicity": check_systematicity, "length_gen": check_length_gen,
            "decoding": check_decoding}


def test_every_experiment_implements_the_contract():
  """The contract's members are REQUIRED or have a default, and every module of experiments/ loads under it."""
  members = {m for m in vars(experiment.Experiment) if not m.startswith("_")} | set(
      experiment.Experiment.__annotations__)
  assert members == set(experiment.REQUIRED) | set(experiment.DEFAULTS)
  for module in pkgutil.iter_modules(experiments.__path__):
    experiment.load(module.name)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="XLA's instruction-set cap is an x86 flag")
def test_numerics_fingerprint_tells_instruction_sets_apart():
  """The fingerprint differs where XLA compiles for another instruction set (so a golden file written on an
  AVX2 machine is not compared exactly on an SSE4.2 one)."""
  def fingerprint(isa: str) -> str:
    env = {**os.environ, "XLA_FLAGS": f"--xla_cpu_max_isa={isa}", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, numerics.__file__], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()[-1]

  assert fingerprint("AVX2") != fingerprint("SSE4_2")


@pytest.mark.parametrize("name", discovered())
def test_smoke_experiment(name, tmp_path, capsys):
  run_dir = experiment.run(name, "smoke", [], runs_root=str(tmp_path))
  with open(os.path.join(run_dir, "results.json")) as f:
    results = json.load(f)
  stages = [l for l in capsys.readouterr().err.replace("\r", "\n").splitlines() if l.endswith(" s") and " ... " in l]
  assert [l.split(": sweep")[0] for l in stages[:-1]] == list(results["models"]), stages  # a line per model analyzed
  assert stages[-1].startswith("figures and report"), stages
  check_golden(name, results)
  check_contract(name, run_dir, results)
  written = os.path.join(run_dir, "analysis.json")
  if os.path.exists(written):
    os.remove(written)  # analyze writes it again
  assert cli.main(["analyze", run_dir]) == 0, capsys.readouterr().err[-3000:]
  assert capsys.readouterr().out.strip().splitlines()[-1] == f"analysis: {run_dir}/analysis.json"
  check_analysis(run_dir, results)
  check_summary(run_dir, results)
  SPECIFIC.get(name, lambda *_: None)(run_dir, results)
