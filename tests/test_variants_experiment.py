"""The variants experiment end to end (smoke preset, `make test-slow`: seven models analyzed take minutes):
every kind trains and is analyzed, the training-free wrappers of the vanilla model are analyzed, and the report
has a row and a table per variant. Bad input and the cpu preset's matching are checked in the default suite."""
import os

import pytest

from conftest import results_of, run_cli
from experiments import variants
from looprec import experiment

KINDS = {"looped": "looped", "prelude_core_coda": "prelude_core_coda", "hyperloop": "hyperloop",
         "exit_gate": "exit_gate", "vanilla": "looped"}
TRAINING_FREE = ["vanilla training-free 1:2 K=3 b=0.5", "vanilla training-free 1:2 K=1 b=0.5"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  runs = tmp_path_factory.mktemp("runs")
  proc = run_cli("experiment", "variants", "--preset", "smoke", "--runs-dir", str(runs), timeout=1800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  path, results = results_of(proc)
  return os.path.dirname(path), results


@pytest.mark.slow
def test_every_kind_and_the_training_free_wrappers_are_reported(smoke):
  run_dir, results = smoke
  models = results["models"]
  assert list(models) == list(KINDS) + TRAINING_FREE
  for name, kind in KINDS.items():
    assert models[name]["kind"] == kind and models[name]["steps"] == 40 and models[name]["steps_per_second"] > 0
    assert len(models[name]["accuracy"]) == 10 and len(models[name]["accuracy"]["4hop_test"]) == 6  # hops 1..5, test and val
  for name in TRAINING_FREE:
    assert models[name]["kind"] == "training_free" and models[name]["n_params"] == models["vanilla"]["n_params"]
  # K = 1: one loop of the window is the vanilla model itself
  k1 = models[TRAINING_FREE[1]]["accuracy"]
  assert all(k1[s]["1"] == pytest.approx(models["vanilla"]["accuracy"][s]["1"], abs=1e-6) for s in k1)
  assert any(p.startswith("gate:") for p in results["halting"]["exit_gate"])
  assert not any(p.startswith("gate:") for p in results["halting"]["looped"])
  with open(os.path.join(run_dir, "report.md")) as f:
    text = f.read()
  for name in list(KINDS) + TRAINING_FREE:
    assert f"| {name} |" in text and f"## {name}\n" in text
  assert {"accuracy_hop_by_loops.png", "halting.md", "margins.png", "analysis.json"} <= set(os.listdir(run_dir))


@pytest.mark.slow
def test_analyze_reloads_every_kind(smoke):
  run = experiment.load_run(smoke[0])
  assert {n: run.model(n).cfg.kind for n in run.cfg.models} == KINDS


@pytest.mark.parametrize("override, message", [
    ("models.hyperloop.model=kind=mamba", "models.hyperloop: model.kind='mamba' is not one of"),
    ("models.looped.model=n_prelude=1", "models.looped: model.n_prelude=1: model.kind='looped' has no n_prelude"),
    ("models.exit_gate.model=kind=exit_gate,exit_beta=-1", "models.exit_gate: model.exit_beta=-1.0 must be >= 0"),
    ("models.hyperloop.model=kind=hyperloop,colour=red", "models.hyperloop.model: unknown config key 'colour'"),
    ("training_free=model=vanilla,window=1:7", "model.window='1:7' is outside the model's 3 layers"),
])
def test_bad_variants_are_one_line_errors(tmp_path, override, message):
  proc = run_cli("experiment", "variants", "--preset", "smoke", override, "--runs-dir", str(tmp_path))
  err = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], proc.stderr
  assert not os.listdir(tmp_path)


def test_cpu_preset_matches_depth_and_budget():
  cfg = variants.cpu()
  variants.validate(cfg)
  assert {cfg.models[n].steps or cfg.train.steps for n in cfg.models} == {10000}
  depth = {}
  for name, run in cfg.models.items():
    mcfg = cfg.model_cfg(name)
    depth[name] = mcfg.n_prelude + mcfg.n_layers * run.rec.max_loops + mcfg.n_coda
  assert set(depth.values()) == {4}, depth
  assert [s.split(",")[:2] for s in variants.training_free_specs(cfg)] == [["model=vanilla", "window=1:3"]] * 2
