"""Presets: `paper` is RECIPE task B value by value; `cpu` never trains beyond its trained depth."""
import numpy as np
import pytest

from experiments import depth_extrap
from conftest import check_against_official
from looprec import config as C, data


def test_depth_paper_preset_matches_the_official_table():
  cfg = depth_extrap.paper()
  depth_extrap.validate(cfg)
  check_against_official(cfg, depth_extrap, "depth_extrap paper")
  assert abs(cfg.data.test_fraction - 750 / 15750) < 1e-12 and cfg.data.hop_weights == "pool"
  assert set(cfg.models) == {"looped", "fixed_r6", "fixed_r7", "fixed_r8", "vanilla"}
  assert {run.n_layers for run in cfg.models.values()} == {4}
  assert cfg.eval.max_loops >= 40 and cfg.train.decay_steps == 0


def test_official_table_test_catches_a_changed_value():
  cfg = C.override(depth_extrap.paper(), ["model.embed_init_std=0.02"])
  with pytest.raises(AssertionError, match="model.embed_init_std"):
    check_against_official(cfg, depth_extrap, "depth_extrap paper")


def test_cpu_preset_trains_no_hop_beyond_its_depth():
  cfg = depth_extrap.cpu()
  depth_extrap.validate(cfg)
  task = data.make_task(cfg.data)
  k = cfg.data.curriculum.last_hop
  ds = data.stage_dataset(task, k, cfg.train.batch_size, start_step=0)
  hops = np.concatenate([ds[i]["hop"] for i in range(0, 20000, 97)])
  assert hops.max() == k and set(np.unique(hops)) == set(range(1, k + 1))
  assert cfg.eval.max_hop >= k + 6 and cfg.eval.max_loops >= 2 * 8
  vanilla = cfg.models["vanilla"]
  assert vanilla.rec.loops == 1
  assert vanilla.n_layers == round(cfg.models["looped"].rec.mean_loops)



def test_every_field_a_preset_changes_from_the_paper_preset_has_a_reason():
  """Deviations are computed (experiment.deviations) and each needs a reason kept beside the preset; a reason for a
  field that no longer differs is stale."""
  from experiments import systematicity, variants
  from looprec import experiment
  for module in (depth_extrap, systematicity, variants):
    paper = experiment.paper_preset(module)
    for name, preset in module.PRESETS.items():
      assert experiment.unexplained(preset(), paper) == ([], []), f"{module.__name__} preset {name}"


def test_a_difference_without_a_reason_is_caught_and_reported():
  import dataclasses
  from looprec import experiment
  cfg = C.override(depth_extrap.cpu(), ["model.attention=dot_product"])
  stale = dataclasses.replace(cfg, reasons={**cfg.reasons, "train.b1": "kept after b1 went back to 0.9"})
  assert experiment.unexplained(stale, depth_extrap.paper()) == (["model.attention"], ["train.b1"])
  text = experiment.deviations_text(cfg, depth_extrap.paper())
  assert "| `model.attention` 'dot_product' ('einsum') | no reason given (an override?) |" in text
  assert "`models.fixed` trained (—)" in text and "`models.fixed_r6` — (trained)" in text
  assert experiment.deviations_text(depth_extrap.paper(), depth_extrap.paper()).startswith("None: every field")
