"""Presets: `paper` is RECIPE task B value by value; `cpu` never trains beyond its trained depth."""
import dataclasses

import numpy as np
import pytest

from experiments import depth_extrap
from looprec import config as C, data


def test_paper_preset_is_the_recipe():
  cfg = depth_extrap.paper()
  depth_extrap.validate(cfg)
  d, m, t = cfg.data, cfg.model, cfg.train
  assert (d.n_entities, d.n_relations) == (200, 10)
  assert d.train_chains_per_hop == 15000 and abs(d.test_fraction - 750 / 15750) < 1e-12 and d.n_eval == 750
  assert d.seq_len == 50 and d.answer_at == "next" and d.hop_weights == "pool"
  assert (m.d_model, m.n_heads, m.n_layers) == (768, 12, 4)
  assert m.pos_emb == "none" and m.attn_window == 0 and m.out_init_scale == 0.0
  assert (m.embed_dropout, m.attn_dropout, m.resid_dropout) == (0.0, 0.0, 0.0) and m.dtype == "bfloat16" and m.injection == "none"
  assert (t.lr, t.weight_decay, t.batch_size, t.warmup_steps) == (1e-4, 0.01, 128, 2000)
  assert t.decay_steps == 0 or t.decay_steps >= t.steps  # linear schedule over a nominal run far longer than any
  assert t.label_smoothing == 0.0 and t.grad_clip == 0.0
  assert (d.curriculum.first_hop, d.curriculum.threshold) == (2, 0.95) and t.restart_optimizer
  assert cfg.eval.max_loops == 40 and cfg.eval.max_hop == 40
  looped = cfg.models["looped"].rec
  assert (looped.kind, looped.lam, looped.low, looped.high) == ("dynamic", 4.0, 2, 8)
  assert cfg.models["looped"].n_layers == 4


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


@pytest.mark.slow
def test_cpu_preset_looped_model_extrapolates(tmp_path):
  """The science of the cpu preset on a shorter budget: trained on <= 4 hops with R <= 4, the looped model
  answers 5..7-hop chains by looping 5+ times."""
  cfg = C.override(depth_extrap.cpu(), ["train.steps=8000"])
  cfg = dataclasses.replace(cfg, models={"looped": cfg.models["looped"]})
  depth_extrap.validate(cfg)
  m = depth_extrap.run(cfg, str(tmp_path))["models"]["looped"]
  assert m["trained_max_hop"] == 4
  for hop in (5, 6, 7):
    acc, loops = depth_extrap.best_over_loops(m["accuracy"][f"{hop}hop_test"])
    assert acc >= 0.8 and loops > 4, (hop, acc, loops)
