"""Inference-time depth analysis: one-compile sweeps, margins, and `python -m looprec analyze` on a smoke run."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import monitoring

from conftest import run_cli
from looprec import analysis, cli, data, eval as evaluation, experiment, halting
from looprec.config import ConfigError, ModelConfig
from looprec.models.looped import LoopedTransformer

COMPILES = []
monitoring.register_event_duration_secs_listener(
    lambda name, *_, **__: COMPILES.append(name) if name == "/jax/core/compile/backend_compile_duration" else None)


def split(n, seed):
  rng = np.random.default_rng(seed)
  return {"tokens": rng.integers(1, 12, (n, 5)).astype(np.int32), "read_pos": np.full(n, 4, np.int32),
          "target": rng.integers(0, 12, n).astype(np.int32)}


def test_sweep_of_24_loops_compiles_once():
  model = LoopedTransformer(ModelConfig(d_model=16, n_heads=2, n_layers=1, attn_window=2), vocab_size=12)
  params = model.init(jax.random.PRNGKey(0))
  splits = {"1hop_test": split(10, 0), "2hop_test": split(7, 1)}
  COMPILES.clear()
  acc = analysis.sweep(model, params, splits, 24, batch_size=8)  # two splits, three batches
  assert len(COMPILES) == 1
  assert [len(acc[s]) for s in splits] == [24, 24]
  loop_logits_RxBxV = model.loop_logits(params, splits["2hop_test"]["tokens"], splits["2hop_test"]["read_pos"], 24)
  want_R = np.mean(np.argmax(loop_logits_RxBxV, -1) == splits["2hop_test"]["target"], 1)
  np.testing.assert_allclose([acc["2hop_test"][str(r)] for r in range(1, 25)], want_R)
  with pytest.raises(ConfigError, match="max_loops=0"):
    analysis.sweep(model, params, splits, 0)


def test_margins_on_a_synthetic_case():
  # two examples, target 0, three loops: ex0 wrong, right, right; ex1 never right
  logits_RxBxV = jnp.array([[[0.0, 2.0, 1.0], [0.0, 1.0, 0.0]],
                            [[3.0, 1.0, 0.0], [0.0, 2.0, 0.0]],
                            [[1.5, 1.0, 0.0], [-1.0, 3.0, 0.0]]])
  margin_RxB, hit_RxB = evaluation.logit_margins(logits_RxBxV, jnp.array([0, 0]))
  np.testing.assert_allclose(margin_RxB, [[-2.0, -1.0], [2.0, -2.0], [0.5, -4.0]])
  m = analysis.summarize_margins(np.asarray(margin_RxB), np.asarray(hit_RxB))
  np.testing.assert_allclose(m["margin"], [-1.5, 0.0, -1.75])
  assert m["t_star"] == 2.0 and m["hit_fraction"] == 0.5 and m["peak_loop"] == 2
  assert analysis.summarize_margins(np.asarray(margin_RxB)[:1], np.asarray(hit_RxB)[:1])["t_star"] is None


@pytest.mark.parametrize("name", ["depth_extrap", "systematicity"])
def test_splits_carry_the_answer_set_size(name):
  """Evaluation splits carry the answer-set size (`n_answers`, kept by `data.take`): halt and analyze_model with
  the default policies, the relative bound kl_entropy_rel among them, need nothing more on either task."""
  module = experiment.load(name)
  cfg = module.PRESETS["smoke"]()
  task = data.make_task(cfg.data)
  splits = {s: data.take(ex, slice(0, 16)) for s, ex in list(module.eval_splits(task, cfg.eval.max_hop).items())[:2]}
  assert [analysis.answer_set_size(ex) for ex in splits.values()] == [task.vocab.n_entities] * 2
  model = cfg.build_model("looped", task.vocab.size)
  params = model.init(jax.random.PRNGKey(0))
  got = analysis.analyze_model(model, params, splits, 2, halt_loops=2, margin_loops=2, batch_size=16)
  assert "kl_entropy_rel" in [p.partition(":")[0] for p in got["halting"]]
  table = analysis.halt(model, params, splits, "kl_entropy_rel", max_loops=2, batch_size=16, fixed=got["sweep"])
  assert set(table) == set(splits) and all(1 <= row["mean_loops"] <= 2 for row in table.values())


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  runs = tmp_path_factory.mktemp("runs")
  proc = run_cli("experiment", "depth_extrap", "--preset", "smoke", "train.steps=60", "models.vanilla.steps=20",
                 "eval.max_hop=3", "--runs-dir", str(runs))
  assert proc.returncode == 0, proc.stderr[-2000:]
  return os.path.realpath(runs / "depth_extrap" / "latest")


def test_experiment_reports_halting_and_margins(smoke_run):
  with open(os.path.join(smoke_run, "results.json")) as f:
    results = json.load(f)
  for name in ("looped", "vanilla"):
    assert set(results["halting"][name]) == {str(halting.parse_policy(p)) for p in halting.RULES if p != "gate"}
    for table in results["halting"][name].values():
      assert set(table) == {"atomic", "2hop_test", "3hop_test", "atomic_val", "2hop_val", "3hop_val"}
      assert all(set(row) == {"accuracy", "mean_loops", "median_loops"} for row in table.values())
    for curve in results["margins"][name].values():
      assert len(curve["margin"]) == analysis.MARGIN_LOOPS and 1 <= curve["peak_loop"] <= analysis.MARGIN_LOOPS
  assert {"analysis.json", "margins.png", "halting.md"} <= set(os.listdir(smoke_run))


def test_analyze_command_writes_analysis(smoke_run, capsys):
  for f in ("analysis.json", "margins.png", "halting.md", "analysis_accuracy_hop_by_loops.png"):
    os.remove(os.path.join(smoke_run, f))
  assert cli.main(["analyze", smoke_run, "--max-loops", "4", "--margin-loops", "6", "--halt-loops", "5"]) == 0
  assert capsys.readouterr().out.strip().splitlines()[-1] == f"analysis: {smoke_run}/analysis.json"
  with open(os.path.join(smoke_run, "analysis.json")) as f:
    models = json.load(f)["models"]
  assert set(models) == {"looped", "vanilla"}
  looped = models["looped"]
  assert [p.partition(":")[0] for p in looped["halting"]] == [p for p in halting.RULES if p != "gate"]  # no gate
  for table in looped["halting"].values():
    for row in table.values():
      assert 1 <= row["mean_loops"] <= row["max_loops"] <= 5 and row["fixed_max"]["loops"] == 5
  assert len(looped["sweep"]["2hop_test"]) == 5 and len(looped["margins"]["2hop_test"]["margin"]) == 6
  assert {"analysis_accuracy_hop_by_loops.png", "margins.png", "halting.md"} <= set(os.listdir(smoke_run))


BAD = [
    (["--policy", "nope"], "unknown halting policy 'nope'"),
    (["--policy", "kl_entropy:eps=-1"], "eps=-1.0 must be >= 0"),
    (["--max-loops", "0"], "max_loops=0 must be >= 1"),
    (["--margin-loops", "x"], "invalid int value"),
    (["--policy", "gate:q=2"], "q=2.0 must be in [0, 1]"),
    (["--policy", "gate"], "halting policy gate:q=0.5 applies to no model of the run ('gate' needs a model with an exit gate"),
    (["--training-free", "window=1:5,model=vanilla"], "model.window='1:5' is outside the model's 2 layers"),
    (["--training-free", "window=0:3"], "--training-free 'window=0:3' fits no model of the run"),
    (["--training-free", "window=0:1,model=nope"], "model='nope' is not a model of the run"),
    (["--training-free", "window=0:1,damping=-1"], "model.damping=-1.0 must be in [0, 1]"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_analyze_bad_input(smoke_run, capsys, args, message):
  assert cli.main(["analyze", smoke_run, *args]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_config_error_during_the_analysis_is_a_bug(smoke_run, monkeypatch, capsys):
  """Past the checks of the run folder and the options, a ConfigError is a bug: a traceback and exit 1."""
  def broken(*args, **kwargs):
    raise ConfigError("injected during the analysis")
  monkeypatch.setattr(analysis, "analyze_model", broken)
  assert cli.main(["analyze", smoke_run]) == 1
  err = capsys.readouterr().err
  assert "Traceback" in err and "experiment.Bug" in err and "injected during the analysis" in err
  assert not any(line.startswith("error:") for line in err.splitlines())


def test_analyze_needs_a_run_with_checkpoints(smoke_run, tmp_path, capsys):
  assert cli.main(["analyze", str(tmp_path)]) == 2
  assert "is not a run folder" in capsys.readouterr().err
  shutil.copy(os.path.join(smoke_run, "config.json"), tmp_path)
  assert cli.main(["analyze", str(tmp_path)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "no checkpoint of model 'looped'" in err[0]


def test_analyze_training_free_loops_the_vanilla_models_window(smoke_run, capsys):
  """The smoke run's vanilla model has 2 layers: window 1:2 fits it alone; with K = 1 its R = 1 column is the
  trained model's accuracy."""
  assert cli.main(["analyze", smoke_run, "--training-free", "window=1:2,substeps=1,damping=0.5", "--max-loops", "3",
                   "--margin-loops", "3", "--halt-loops", "3"]) == 0
  path = capsys.readouterr().out.strip().splitlines()[-1].partition("analysis: ")[2]
  assert path == os.path.join(smoke_run, "training_free", "window1-2_substeps1_damping0.5", "analysis.json")
  with open(path) as f:
    models = json.load(f)["models"]
  with open(os.path.join(smoke_run, "results.json")) as f:
    trained = json.load(f)["models"]["vanilla"]["accuracy"]
  assert set(models) == {"vanilla"}
  for split, by_r in models["vanilla"]["sweep"].items():
    assert len(by_r) == 3 and by_r["1"] == pytest.approx(trained[split]["1"], abs=1e-6)
