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
  assert set(cfg.models) == {"looped", "fixed_r6", "fixed_r7", "fixed_r8"}
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

