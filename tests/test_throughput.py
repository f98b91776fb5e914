"""Throughput: the step's FLOP count, device peaks, the rates meter, and what training logs."""
import glob
import itertools
import os
import types

import jax
import numpy as np
import pytest

from conftest import THROUGHPUT_TAGS, tb_points
from looprec import data, models, sharding, throughput, train
from looprec.config import ChainDataConfig, ModelConfig, Recurrence, TrainConfig

D, L, B, T, V = 32, 2, 8, 6, 13
MODEL = models.build(ModelConfig(d_model=D, n_heads=2, n_layers=L, pos_emb="none", injection="none",
                                 attn_window=0), V)


def step_flops(n_loops, scan_options=None):
  tx = train.make_optimizer(TrainConfig())
  steps = train.Programs(MODEL, tx, sharding.make_mesh(), 0.0, *([scan_options] if scan_options else []))
  state = train.init_state(MODEL, tx, jax.random.PRNGKey(0), T, sharding.make_mesh())
  batch = {"tokens": np.ones((B, T), np.int32), "read_pos": np.full((B,), T - 1, np.int32),
           "target": np.ones((B,), np.int32)}
  return steps.flops(n_loops, state, batch)


def test_step_flops_count_every_loop_and_match_the_analytic_count():
  """The cost analysis of the unrolled step counts R loops (a rolled scan would count one): linear in R, and
  within 2% of 3 x (forward matmuls: 24 d^2 per token and layer + 4 T d of attention) + the head."""
  f1, f2, f4 = step_flops(1), step_flops(2), step_flops(4)
  assert np.isclose(f4 - f2, 2 * (f2 - f1), rtol=1e-6)
  per_loop = 3 * B * T * L * (2 * 12 * D * D + 2 * 2 * T * D)
  assert per_loop <= f2 - f1 <= 1.1 * per_loop
  assert 4 * per_loop + 3 * 2 * B * D * V <= f4 <= 1.1 * (4 * per_loop + 3 * 2 * B * D * V)
  from looprec import loop  # the count is the model's: remat recomputation and unrolling do not change it
  assert step_flops(4, loop.Scan(remat="loop")) == f4 and step_flops(4, loop.Scan(unroll=2)) == f4


def test_peaks_from_the_table_or_measured_on_cpu():
  h100 = types.SimpleNamespace(platform="gpu", device_kind="NVIDIA H100 80GB HBM3")
  assert throughput.peak_flops("bfloat16", h100) == 989.5e12 and throughput.peak_flops("float32", h100) == 494.7e12
  v5e = types.SimpleNamespace(platform="tpu", device_kind="TPU v5 lite")
  assert throughput.peak_flops("bfloat16", v5e) == 197e12
  assert throughput.peak_flops("bfloat16", types.SimpleNamespace(platform="gpu", device_kind="Mystery")) is None
  cpu = throughput.peak_flops("float32")
  assert 1e9 < cpu < 1e14  # a measured matmul rate, in FLOP/s


def test_meter_rates_cover_counted_steps_only(monkeypatch):
  clock = itertools.count(100.0, 2.0)  # each reading 2 s after the previous one
  monkeypatch.setattr(throughput.time, "perf_counter", lambda: next(clock))
  meter = throughput.Meter({2: 1e9, 4: 3e9}.get, lambda: 1e10, n_devices=2)
  for r in (2, 4, 4, 2):
    meter.count(r)
  rates = meter.rates((16, 10))
  assert rates == pytest.approx({"examples_per_second": 32.0, "tokens_per_second": 320.0,
                                 "mfu": (2 * 1e9 + 2 * 3e9) / 2.0 / 2e10})
  assert throughput.Meter(lambda r: None, lambda: 1e10, 1).rates((1, 1)) == {}  # nothing counted
  unknown = throughput.Meter(lambda r: None, lambda: None, 1)
  unknown.count(3)
  assert unknown.rates((2, 5))["mfu"] is None


def test_training_logs_throughput_to_tensorboard_and_the_bar(tmp_path, capsys):
  task = data.make_task(ChainDataConfig(n_entities=8, n_relations=2, seq_len=6, train_chains_per_hop=12))
  model = models.build(ModelConfig(d_model=16, n_heads=2), task.vocab.size)
  cfg = TrainConfig(batch_size=8, eval_every=100, checkpoint_every=100, log_every=5)
  train.train_model("m", model, Recurrence.parse("dynamic:3,2,4"), 30, cfg, task, sharding.make_mesh(),
                    str(tmp_path), 0, {})
  points = tb_points(glob.glob(os.path.join(tmp_path, "tb", "m"))[0])
  for tag in THROUGHPUT_TAGS:
    assert points.get(tag) and set(points[tag]) <= set(points["train/loss"]), (tag, points)
  assert "ex/s=" in capsys.readouterr().err
