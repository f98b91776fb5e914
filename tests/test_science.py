"""The science tier (`make test-slow`): one test per headline phenomenon of the docs, each at the smallest scale
that still shows it on a 2-core CPU (minutes). The thresholds leave margin below what seeds 0, 1, 2 (`seed`:
initialization and data order) measured; a second graph (`data.seed=1`, seed 3) gave values within those ranges.

Depth: depth_extrap's cpu task (N = 20, M = 4, 2-token attention window, curriculum 2 -> 4 hops) for 3,000 steps
per model instead of 20,000. Chance is 1/20.
"""
import dataclasses

import pytest

from experiments import depth_extrap, systematicity
from looprec import analysis, config as C, data, models, sharding, train
from looprec.config import ModelRun
from looprec.models import training_free

pytestmark = pytest.mark.slow

SEED = 0
MAX_LOOPS = 12  # eval sweeps R = 1..12; training R is at most 4
DEPTH = C.override(depth_extrap.cpu(), [f"seed={SEED}", "train.steps=3000", "eval.max_hop=8",
                                        f"eval.max_loops={MAX_LOOPS}", "train.checkpoint_every=100000"])
MODELS = {"looped": ModelRun(n_layers=1, recurrence="dynamic:4,2,4"),  # 1 layer, R in [2, 4]
          "vanilla": ModelRun(n_layers=4, recurrence="fixed:1"),  # the looped model's deepest trained unrolled depth
          "exit_gate": ModelRun(n_layers=1, recurrence="dynamic:4,2,4", model="kind=exit_gate,exit_beta=0.1")}
TRAINED_HOP, TRAINED_R = 4, 4


@pytest.fixture(scope="module")
def depth(tmp_path_factory):
  """name -> (model, params, accuracy[split][R]) of MODELS, each trained on first use (seeded as
  experiment.train_models seeds the i-th model)."""
  cfg = dataclasses.replace(DEPTH, models=MODELS)
  task, mesh = data.make_task(cfg.data), sharding.make_mesh()
  splits = depth_extrap.eval_splits(task, cfg.eval.max_hop)
  run_dir, cache = str(tmp_path_factory.mktemp("depth")), {}

  def get(name):
    if name not in cache:
      i, mrun = list(MODELS).index(name), MODELS[name]
      model = cfg.build_model(name, task.vocab.size)
      result = train.train_model(name, model, mrun.rec, cfg.train.steps, cfg.train, task, mesh, run_dir,
                                 cfg.seed + 1000 * i, C.to_dict(cfg))
      assert result.trained_max_hop == TRAINED_HOP, (name, result.stages)
      cache[name] = (model, result.params, analysis.sweep(model, result.params, splits, MAX_LOOPS, mesh))
    return cache[name]

  get.task, get.splits, get.mesh = task, splits, mesh
  return get


def best(accuracy_by_r: dict) -> tuple[float, int]:
  return depth_extrap.best_over_loops(accuracy_by_r)


def test_looped_model_extrapolates_beyond_its_trained_depth_and_vanilla_does_not(depth):
  """docs/reproducing.md, depth extrapolation: trained on <= 4 hops with R <= 4, the looped model answers 5- and
  6-hop chains by looping more than 4 times; a vanilla model of 4 layers (its deepest trained unrolled depth),
  trained alike, learns the trained hops but is at chance beyond them. Seeds 0 / 1 / 2: looped 0.95 / 1.00 /
  0.95 on 5 hops and 0.72 / 1.00 / 0.93 on 6 (best R >= 5); vanilla at R = 1: 0.89 / 0.85 / 0.60 on 4 hops,
  <= 0.07 on 5 and 6."""
  _, _, looped = depth("looped")
  _, _, vanilla = depth("vanilla")
  split = data.split_name
  for hop in range(1, TRAINED_HOP + 1):
    assert best(looped[split(hop)])[0] >= 0.9 and vanilla[split(hop)]["1"] >= (0.9 if hop < 4 else 0.4), hop
  for hop, floor in ((5, 0.8), (6, 0.5)):
    acc, loops = best(looped[split(hop)])
    assert acc >= floor and loops > TRAINED_R, (hop, acc, loops)
    assert vanilla[split(hop)]["1"] <= 0.15, (hop, vanilla[split(hop)]["1"])


def test_exit_gate_halts_later_on_deeper_chains(depth):
  """README "Model kinds" and docs/reproducing.md, variants: the exit gate (`gate:q=0.5`) stops after more loops
  the deeper the chain, beyond the 4 loops it trained with, and answers the untrained 5- and 6-hop chains there.
  Seeds 0 / 1 / 2: mean loops 3.0 -> 9.4 / 3.5 -> 11.8 / 3.0 -> 9.4 from 2 to 7 hops, rising at every hop;
  accuracy 1.00 / 0.89 / 1.00 or more on 5 and 6 hops."""
  model, params, _ = depth("exit_gate")
  hops = range(2, 8)
  splits = {data.split_name(h): depth.splits[data.split_name(h)] for h in hops}
  table = analysis.halt(model, params, splits, "gate:q=0.5", mesh=depth.mesh)  # at most 16 loops
  loops = [table[data.split_name(h)]["mean_loops"] for h in hops]
  assert all(b > a for a, b in zip(loops, loops[1:])), loops
  assert loops[-1] - loops[0] >= 3 and loops[4] > TRAINED_R, loops  # 7 hops vs 2; 6 hops past the trained R
  for hop in (5, 6):
    assert table[data.split_name(hop)]["accuracy"] >= 0.8, (hop, table[data.split_name(hop)])


def test_training_free_looping_lifts_vanilla_above_chance_one_hop_beyond(depth):
  """README "Model kinds" and docs/reproducing.md, training-free looping: the trained 4-layer vanilla model's
  middle layers (1..2) looped with the paper's damped update (K = 6, beta = 0.5), no training, answer 5-hop
  chains (k + 1) above chance (0.05) where the vanilla model itself is at chance, and keep 3-hop chains. Seeds
  0-2: best over R = 1..4 loops 0.42 / 0.38 / 0.24 (at R = 1, the paper's single loop: 0.38 / 0.38 / 0.14)
  against 0.05-0.07."""
  model, params, vanilla = depth("vanilla")
  looped = models.build(training_free.wrap(model.cfg, "window=1:3,substeps=6,damping=0.5"), depth.task.vocab.size)
  acc = analysis.sweep(looped, params, depth.splits, 4, depth.mesh)
  five = data.split_name(TRAINED_HOP + 1)
  assert vanilla[five]["1"] <= 0.12 and best(acc[five])[0] >= 0.15, (vanilla[five]["1"], acc[five])
  assert acc[data.split_name(3)]["1"] >= 0.8


def test_systematicity_reaches_id_generalization(tmp_path):
  """README "Systematicity runs" and docs/reproducing.md, systematic generalization: the looped model (1 layer,
  R = 4) trained on atomic facts and ID 2-hop compositions composes held-out ID pairs (test_inferred_iid), the
  second (grokking) stage, at N = 100 in 3,000 steps with every atomic fact four times per epoch (the cpu_long
  data). Seeds 0-2: test_inferred_iid 0.94 (seed 0)."""
  cfg = C.override(systematicity.cpu(), [f"seed={SEED}", "train.steps=3000", "data.atomic_repeats=4",
                                         "train.eval_every=100000", "train.checkpoint_every=100000"])
  cfg = dataclasses.replace(cfg, models={"looped": cfg.models["looped"]})
  task, mesh = data.make_task(cfg.data), sharding.make_mesh()
  model, mrun = cfg.build_model("looped", task.vocab.size), cfg.models["looped"]
  result = train.train_model("looped", model, mrun.rec, cfg.train.steps, cfg.train, task, mesh, str(tmp_path),
                             cfg.seed, C.to_dict(cfg))
  accuracy = analysis.sweep(model, result.params, task.probes, mrun.rec.max_loops, mesh, cfg.eval.batch_size)
  final = {split: by_r[str(mrun.rec.max_loops)] for split, by_r in accuracy.items()}
  assert final["train_inferred"] >= 0.95 and final["id_atomic"] >= 0.95, final
  assert final["test_inferred_iid"] >= 0.8, final
