"""Parameters and optimizer state sharded over an `fsdp` mesh axis (train.fsdp): 8 simulated devices train to the
losses and parameters of one device, the state really is split, checkpoints move between layouts."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import results_of, run_cli

# A tiny looped model (dropout, dynamic R in one program, clipping, Grokfast, AdamW) trained 4 steps on a mesh of
# every device, once for each train.fsdp in argv[2] (one device: train.fsdp=1 only). The state of the first layout
# is saved at step 2; the later layouts resume from it (a different split), and so does the one-device run's
# check of that save. Writes the losses, sweeps, halting, shard shapes and parameters under argv[1].
SCRIPT = r"""
import json, sys
import jax, numpy as np
from looprec import analysis, checkpoint, data, sharding, train
from looprec.config import ChainDataConfig, ModelConfig, Recurrence, TrainConfig
from looprec.models.looped import LoopedTransformer

out, layouts = sys.argv[1], [int(n) for n in sys.argv[2].split(",")]
task = data.make_task(ChainDataConfig(n_entities=10, n_relations=3, seq_len=8))
model = LoopedTransformer(ModelConfig(d_model=32, n_heads=4, n_layers=1, embed_dropout=0.1, resid_dropout=0.1),
                          task.vocab.size)
tx = train.make_optimizer(TrainConfig(warmup_steps=2, grokfast_alpha=0.9))
rec = Recurrence.parse("dynamic:2,1,3")
iterator = lambda meta=None: data.stage_iterator(task, 3, 16, 0)
flat = lambda tree: {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}
shards = lambda tree: {jax.tree_util.keystr(k): [list(v.shape), list(v.addressable_shards[0].data.shape)]
                       for k, v in jax.tree_util.tree_leaves_with_path(tree)}
seen = {"devices": jax.device_count()}
for fsdp in layouts:
  mesh = sharding.make_mesh(fsdp)
  state = train.init_state(model, tx, jax.random.PRNGKey(0), 8, mesh)
  steps, losses, first = train.OneProgram(model, tx, mesh, 0.0, max_loops=3), {}, 0
  ckpt = checkpoint.Checkpointer(f"{out}/ckpt", 2)
  if fsdp != layouts[0]:
    first, _, restored, _ = ckpt.restore_latest(checkpoint.abstract_like(state.saved()), iterator)
    state = train.fresh_state(restored, jax.random.PRNGKey(0), mesh, first)
  elif jax.device_count() == 1:
    saved = ckpt.restore_latest(checkpoint.abstract_like(state.saved()), iterator)[2]  # the 8-device run's step 2
  for i in range(first, 4):
    if i == 2 and fsdp == layouts[0]:
      if jax.device_count() == 1:
        np.savez(f"{out}/restored.npz", **flat(saved), **{"own" + k: v for k, v in flat(state.saved()).items()})
      else:
        ckpt.save(2, state.saved(), iterator(), {})
        ckpt.wait()
    batch = sharding.put_batch(task.train_examples(3, np.arange(16) + 16 * i), mesh)
    state, m = steps.step(state, batch, train.draw_loops(rec, 0, i))
    losses[i] = float(m["loss"])
  ckpt.close()
  seen[fsdp] = {"losses": losses, "health": np.asarray(state.health).tolist(), "shards": shards(state.saved())}
  if fsdp == layouts[0]:
    splits = {"3hop": task.eval_split(3)}
    seen["sweep"] = analysis.sweep(model, state.params, splits, 4, mesh, 16)
    seen["halt"] = analysis.halt(model, state.params, splits, "argmax:n=1", 4, mesh, 16)
  np.savez(f"{out}/state_{fsdp}.npz", **flat(state.saved()))
  if fsdp == layouts[0] and jax.device_count() > 1:
    checkpoint.save_params(f"{out}/params", state.params, {})
if jax.device_count() == 1:  # the 8-device run's split params, read onto one device
  np.savez(f"{out}/params.npz", **flat(checkpoint.restore_params(f"{out}/params")[0]))
json.dump(seen, open(f"{out}/seen_{jax.device_count()}.json", "w"))
"""


def _run(out, devices: int, layouts: str) -> dict:
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
  os.makedirs(out, exist_ok=True)
  proc = subprocess.run([sys.executable, "-c", SCRIPT, str(out), layouts], capture_output=True, text=True, env=env,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(out, f"seen_{devices}.json")) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """(what the 8-device process saw, what the one-device process saw, the folder of both)."""
  out = tmp_path_factory.mktemp("fsdp")
  return _run(out, 8, "8,4"), _run(out, 1, "1"), out


def _close(a: dict, b: dict, rtol: float):
  """Every float leaf of a within rtol of b's, relative to the norm of b's (reduction order changes the last
  bits); integer leaves (step counts) equal."""
  assert a.keys() == b.keys()
  for k in b:
    if b[k].dtype.kind == "f":
      assert np.linalg.norm(a[k] - b[k]) <= rtol * np.linalg.norm(b[k]), k
    else:
      assert np.array_equal(a[k], b[k]), k


def test_sharded_training_equals_one_device(runs):
  """fsdp=8, and data=2 x fsdp=4 resumed at step 2 from the fsdp=8 run's checkpoint, give one device's losses
  (rtol 1e-5) and parameters and optimizer state (each leaf within 1e-4 of its norm; the largest seen is 2e-5)."""
  eight, one, out = runs
  assert eight["devices"] == 8 and one["devices"] == 1
  reference = dict(np.load(out / "state_1.npz"))
  for fsdp, steps in (("8", ["0", "1", "2", "3"]), ("4", ["2", "3"])):
    assert list(eight[fsdp]["losses"]) == steps and eight[fsdp]["health"] == [-1, 0]
    np.testing.assert_allclose([eight[fsdp]["losses"][s] for s in steps],
                               [one["1"]["losses"][s] for s in steps], rtol=1e-5)
    _close(dict(np.load(out / f"state_{fsdp}.npz")), reference, 1e-4)
  assert eight["sweep"] == one["sweep"] and eight["halt"] == one["halt"]  # evaluation of split params


@pytest.mark.parametrize("fsdp", [8, 4])
def test_state_is_split_over_the_fsdp_axis(runs, fsdp):
  """Every matrix of params and optimizer state (moments and Grokfast EMA alike) holds 1 / fsdp of its values on
  a device, split along its largest divisible dimension; vectors and counts are whole."""
  shards = runs[0][str(fsdp)]["shards"]
  params = {k.removeprefix("['params']"): v for k, v in shards.items() if k.startswith("['params']")}
  assert params["['embed']"] == [[20, 32], [20, 32 // fsdp]]
  assert params["['block']['layer_0']['fc']['kernel']"] == [[32, 128], [32, 128 // fsdp]]
  assert params["['block']['layer_0']['attn']['qkv']['kernel']"] == [[32, 3, 4, 8], [32 // fsdp, 3, 4, 8]]
  for key, (shape, shard) in shards.items():
    assert np.prod(shard) == np.prod(shape) // (fsdp if len(shape) >= 2 else 1), key
    mirrored = next((p for p in params if key.endswith(p)), None)
    assert mirrored is not None or key.endswith("count"), key
    assert mirrored is None or params[mirrored] == [shape, shard], key  # a moment is laid out as its parameter
  matrices = sum(np.prod(shape) for shape, _ in shards.values() if len(shape) >= 2)
  assert matrices > 0.9 * sum(np.prod(shape) for shape, _ in shards.values())


def test_checkpoints_move_between_layouts(runs):
  """The 8-device split state saved at step 2 restores onto one device (to its own step-2 state), and
  `restore_params` reads the 8-device split params onto one device bitwise."""
  eight, _, out = runs
  restored = dict(np.load(out / "restored.npz"))
  _close({k: v for k, v in restored.items() if not k.startswith("own")},
         {k.removeprefix("own"): v for k, v in restored.items() if k.startswith("own")}, 1e-4)
  params = np.load(out / "params.npz")
  final = np.load(out / "state_8.npz")
  split = sorted(k for k in eight["8"]["shards"] if k.startswith("['params']"))
  assert sorted("['params']" + k for k in params.files) == split
  for k in params.files:
    assert np.array_equal(params[k], final["['params']" + k]), k


def test_leaf_layout_rule():
  """The rule on an abstract 2 x 4 mesh: the largest dimension 4 divides (the first on a tie), matrices only;
  without an fsdp axis everything is replicated."""
  import jax  # pylint: disable=import-outside-toplevel
  from looprec import sharding  # pylint: disable=import-outside-toplevel
  mesh = jax.sharding.AbstractMesh((2, 4), ("data", "fsdp"))
  spec = lambda shape: tuple(sharding.leaf_sharding(shape, mesh).spec)
  assert spec((20, 32)) == (None, "fsdp") and spec((128, 32)) == ("fsdp", None)
  assert spec((32, 3, 4, 8)) == ("fsdp", None, None, None) and spec((8, 8)) == ("fsdp", None)
  assert spec((6, 10)) == () and spec((32,)) == () and spec(()) == ()
  flat = jax.sharding.AbstractMesh((8,), ("data",))
  assert tuple(sharding.leaf_sharding((32, 128), flat).spec) == ()


@pytest.mark.parametrize("value,message", [("3", "error: train.fsdp=3 does not divide the device count (4)"),
                                           ("0", "error: train.fsdp=0 must be >= 1 (1 = parameters replicated)")])
def test_bad_fsdp_one_line_exit_2_nothing_written(tmp_path, value, message):
  proc = run_cli("experiment", "depth_extrap", "--preset", "smoke", f"train.fsdp={value}", "--runs-dir",
                 str(tmp_path), env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
  assert proc.returncode == 2 and proc.stderr.strip() == message, proc.stderr
  assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_experiment_resumes_in_another_layout_and_analyzes_on_fewer_devices(tmp_path):
  """The smoke preset on 4 devices with train.fsdp=2, stopped at step 30 and resumed with train.fsdp=4, ends with
  the curriculum stages and (within 1e-4 of each leaf's norm) the parameters of an uninterrupted train.fsdp=1
  run; `analyze` on 2 devices loads it split over 2 (train.fsdp=4 does not divide 2) and reproduces the run's
  sweep."""
  import jax  # pylint: disable=import-outside-toplevel
  from looprec import experiment  # pylint: disable=import-outside-toplevel
  devices = lambda n: {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}", "LOOPREC_CACHE": "off"}
  base = ["experiment", "depth_extrap", "--preset", "smoke", "models.vanilla.steps=10", "--runs-dir", str(tmp_path)]
  reference, _ = results_of(run_cli(*base, "train.steps=60", env=devices(4)))
  stopped, _ = results_of(run_cli(*base, "train.steps=30", "train.fsdp=2", env=devices(4)))
  run_dir = os.path.dirname(stopped)
  resumed, results = results_of(run_cli("experiment", "depth_extrap", "--resume", run_dir, "train.steps=60",
                                        "train.fsdp=4", env=devices(4)))
  with open(reference) as f:
    expected = json.load(f)
  assert results["models"]["looped"]["stages"] == expected["models"]["looped"]["stages"]
  ours, theirs = experiment.load_run(run_dir), experiment.load_run(os.path.dirname(reference))
  assert ours.cfg.train.fsdp == 4
  flat = lambda params: {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(params)}
  for name in ("looped", "vanilla"):
    _close(flat(ours.params[name]), flat(theirs.params[name]), 1e-4)
  proc = run_cli("analyze", run_dir, "--max-loops", "8", "--policy", "argmax", env=devices(2))
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(os.path.join(run_dir, "analysis.json")) as f:
    sweep = json.load(f)["models"]["looped"]["sweep"]
  for split, by_r in results["models"]["looped"]["accuracy"].items():
    np.testing.assert_allclose([sweep[split][r] for r in by_r], list(by_r.values()), atol=1e-6)
