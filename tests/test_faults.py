"""Fault injection: every fault is injected and must cost no good checkpoint, say what happened in one line,
and (where training goes on) end bitwise equal to an uninterrupted run. docs/reliability.md tabulates them.

Quick tests (checkpoint corruption, NaN flag, config and run-folder errors) run by default; the end-to-end ones
(kill -9 at random moments, corrupt newest step on resume, NaN through the CLI, two processes) are slow.
"""
import contextlib
import glob
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, THROUGHPUT_TAGS, results_of, run_cli, tb_points

BASE = ["experiment", "depth_extrap", "--preset", "smoke", "train.steps=120", "train.checkpoint_every=20",
        "train.eval_every=40", "models.vanilla.steps=40"]
# The kill test's run: long enough that twelve interruptions land while it trains, on a fast machine too.
LONG = ["experiment", "depth_extrap", "--preset", "smoke", "train.steps=800", "train.checkpoint_every=20",
        "train.eval_every=40", "models.vanilla.steps=200"]
SHOWN = os.environ.get("LOOPREC_FAULT_LOG")  # a file to append one JSON line per injected fault (for the docs)


def record(**row):
  if SHOWN:
    with open(SHOWN, "a") as f:
      f.write(json.dumps(row) + "\n")


def error_lines(stderr: str) -> list[str]:
  return [l for l in stderr.replace("\r", "\n").splitlines() if l.startswith("error: ")]


# ------------------------------------------------------------------ checkpoints (quick, in process)


def _save_steps(directory, steps=(1, 2)):
  import grain
  import jax.numpy as jnp
  from looprec import checkpoint
  ckpt = checkpoint.Checkpointer(directory, 5)
  for s in steps:
    it = iter(grain.MapDataset.range(0, 100).to_iter_dataset())
    for _ in range(s):
      next(it)
    ckpt.save(s, {"params": {"w": jnp.full((3,), float(s))}}, it,
              {"stage": s, "data_fingerprint": checkpoint.fingerprint(10, 8, {"seed": 0})})
  ckpt.wait()
  ckpt.close()


def corrupt(step_dir: str, how: str) -> str:
  """Damages a checkpoint step folder the way a crash or a bad disk would; returns what it did."""
  files = sorted(f for f in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True)
                 if os.path.isfile(f) and os.sep + "d" + os.sep in f)
  if how == "truncated":
    open(files[0], "r+b").truncate(os.path.getsize(files[0]) // 2)
  elif how == "emptied":
    for f in glob.glob(os.path.join(step_dir, "**", "*"), recursive=True):
      if os.path.isfile(f):
        open(f, "w").close()
  elif how == "missing_file":
    os.remove(files[0])
  elif how == "missing_meta":
    os.remove(os.path.join(step_dir, "meta", "metadata"))
  return how


@pytest.mark.parametrize("how", ["truncated", "emptied", "missing_file", "missing_meta"])
def test_restore_falls_back_to_an_older_step(tmp_path, capsys, how):
  import grain
  import jax
  import jax.numpy as jnp
  from looprec import checkpoint
  directory = str(tmp_path / "ck")
  _save_steps(directory)
  corrupt(os.path.join(directory, "2"), how)
  ckpt = checkpoint.Checkpointer(directory, 5)
  abstract = {"params": {"w": jax.ShapeDtypeStruct((3,), jnp.float32)}}
  step, meta, state, it = ckpt.restore_latest(abstract, lambda meta: iter(grain.MapDataset.range(0, 100)
                                                                         .to_iter_dataset()))
  ckpt.close()
  assert step == 1 and meta["stage"] == 1 and float(state["params"]["w"][0]) == 1.0 and next(it) == 1
  err = capsys.readouterr().err
  assert "step 2 is unreadable" in err and "using step 1" in err, err
  assert os.path.isdir(directory + ".corrupt-2") and sorted(os.listdir(directory)) == ["1"]
  record(fault=f"newest checkpoint {how} (unit)", injected=1, survived=1, lost=0)


def test_a_step_damaged_twice_is_set_aside_twice(tmp_path, capsys):
  """Step 2 damaged, set aside, written again and damaged again: the second copy goes beside the first."""
  import grain
  import jax
  import jax.numpy as jnp
  from looprec import checkpoint
  directory = str(tmp_path / "ck")
  abstract = {"params": {"w": jax.ShapeDtypeStruct((3,), jnp.float32)}}
  for attempt in (1, 2):
    _save_steps(directory, steps=(1, 2) if attempt == 1 else (2,))
    corrupt(os.path.join(directory, "2"), "truncated")
    ckpt = checkpoint.Checkpointer(directory, 5)
    step, *_ = ckpt.restore_latest(abstract, lambda meta: iter(grain.MapDataset.range(0, 100).to_iter_dataset()))
    ckpt.close()
    assert step == 1 and "step 2 is unreadable" in capsys.readouterr().err
  assert sorted(os.listdir(tmp_path)) == ["ck", "ck.corrupt-2", "ck.corrupt-2.2"] and os.listdir(directory) == ["1"]


def test_analysis_restore_falls_back_too(tmp_path, capsys):
  from looprec import checkpoint
  directory = str(tmp_path / "ck")
  _save_steps(directory)
  corrupt(os.path.join(directory, "2"), "truncated")
  params, meta = checkpoint.restore_params(directory)
  assert float(params["w"][0]) == 1.0 and meta["stage"] == 1
  assert "step 2 is unreadable" in capsys.readouterr().err


def test_analysis_restore_logs_no_expected_orbax_warnings(tmp_path, caplog):
  """A read-only restore of params and meta (the data item left on disk) is routine: orbax's warnings about it are
  dropped, and a warning of any other kind still passes."""
  import logging
  from looprec import checkpoint
  directory = str(tmp_path / "ck")
  _save_steps(directory)
  with caplog.at_level(logging.WARNING, logger="absl"):
    assert checkpoint.restore_params(directory) is not None
    logging.getLogger("absl").warning("something else")
  assert [r.getMessage() for r in caplog.records if r.name == "absl"] == ["something else"]


def test_no_readable_step_is_one_error(tmp_path):
  from looprec import checkpoint
  from looprec.config import ConfigError
  directory = str(tmp_path / "ck")
  _save_steps(directory)
  for s in ("1", "2"):
    corrupt(os.path.join(directory, s), "missing_meta")
  with pytest.raises(ConfigError, match=r"no readable checkpoint .*step 2: .*step 1: "):
    checkpoint.restore_params(directory)


def test_checkpoint_of_other_data_is_refused_by_name(tmp_path):
  from looprec import checkpoint
  from looprec.config import ConfigError
  directory = str(tmp_path / "ck")
  _save_steps(directory)
  with pytest.raises(ConfigError, match=r"vocab_size=10, the data now has vocab_size=12"):
    checkpoint.restore_params(directory, checkpoint.fingerprint(12, 8, {"seed": 0}))
  with pytest.raises(ConfigError, match=r"step 2 was trained on data with data.seed=0, the data now has 1"):
    checkpoint.restore_params(directory, checkpoint.fingerprint(10, 8, {"seed": 1}))
  newer = checkpoint.fingerprint(10, 8, {"seed": 0, "a_field_added_later": 3})  # an old run, newer code
  assert checkpoint.restore_params(directory, newer) is not None


TRANSIENT = [OSError(5, "Input/output error"), MemoryError("out of memory"),
             ValueError("UNAVAILABLE: Error reading local file: try again"), RuntimeError("RESOURCE_EXHAUSTED: oom")]


@pytest.mark.parametrize("error", TRANSIENT, ids=lambda e: type(e).__name__)
def test_a_transient_read_failure_stops_and_moves_nothing(tmp_path, monkeypatch, error):
  """Only a damaged step is set aside: a failure of the read itself (I/O, memory) stops with one line, so an I/O
  hiccup cannot roll a run back to an older step."""
  import grain
  import jax
  import jax.numpy as jnp
  from looprec import checkpoint
  from looprec.config import ConfigError
  directory = str(tmp_path / "ck")
  _save_steps(directory)
  before = sorted(os.listdir(tmp_path))

  def failing(self, step, abstract, iterator):
    raise error

  monkeypatch.setattr(checkpoint.Checkpointer, "restore", failing)
  ckpt = checkpoint.Checkpointer(directory, 5)
  abstract = {"params": {"w": jax.ShapeDtypeStruct((3,), jnp.float32)}}
  with pytest.raises(ConfigError, match=r"could not read checkpoint .* step 2 .*kept as it is") as info:
    ckpt.restore_latest(abstract, lambda meta: iter(grain.MapDataset.range(0, 100).to_iter_dataset()))
  ckpt.close()
  assert "\n" not in str(info.value)
  assert sorted(os.listdir(tmp_path)) == before and sorted(os.listdir(directory)) == ["1", "2"]
  monkeypatch.undo()
  assert float(checkpoint.restore_params(directory)[0]["w"][0]) == 2.0  # the step itself is intact
  record(fault=f"transient read failure ({type(error).__name__}) at resume", injected=1, survived=1, lost=0)


def test_analysis_restore_stops_on_a_transient_failure(tmp_path, monkeypatch):
  import orbax.checkpoint as ocp
  from looprec import checkpoint
  from looprec.config import ConfigError
  directory = str(tmp_path / "ck")
  _save_steps(directory)

  def failing(self, step, *args, **kwargs):
    raise OSError(5, "Input/output error")

  monkeypatch.setattr(ocp.CheckpointManager, "item_metadata", failing)
  with pytest.raises(ConfigError, match=r"could not read checkpoint .* step 2 \(OSError"):
    checkpoint.restore_params(directory)
  assert sorted(os.listdir(directory)) == ["1", "2"]


def test_damage_is_told_from_a_failed_read():
  from looprec import checkpoint
  assert checkpoint.damaged(ValueError('OUT_OF_RANGE: Error opening "zarr" driver'))
  assert checkpoint.damaged(ValueError('NOT_FOUND: Error reading "params.w/.zarray"'))
  assert checkpoint.damaged(FileNotFoundError("meta/metadata not found"))
  assert checkpoint.damaged(json.JSONDecodeError("Expecting value", "", 0))
  assert not any(checkpoint.damaged(e) for e in TRANSIENT)
  assert not checkpoint.damaged(ValueError("Requested shape (4,) does not match the stored (3,)"))


# ------------------------------------------------------------------ NaN / Inf (quick, in process)


def test_health_flag_names_the_first_non_finite_step_and_quantity():
  import jax
  from looprec import data, sharding, train
  from looprec.config import ChainDataConfig, ModelConfig, TrainConfig
  from looprec.models.looped import LoopedTransformer
  task = data.make_task(ChainDataConfig(n_entities=6, n_relations=2, seq_len=6))
  model = LoopedTransformer(ModelConfig(d_model=16, n_heads=2, n_layers=1), task.vocab.size)
  tx = train.make_optimizer(TrainConfig(warmup_steps=1))
  mesh = sharding.make_mesh()
  for nan_step, want in ((-1, [-1, 0]), (2, [2, 1])):  # 1 = grad_norm: the loss is still finite at that step
    state = train.init_state(model, tx, jax.random.PRNGKey(0), 6, mesh)
    steps = train.Programs(model, tx, mesh, 0.0)
    for step in range(5):
      batch = sharding.put_batch(task.train_examples(2, np.arange(8) + 8 * step), mesh)
      state, metrics = (steps.nan_step if step == nan_step else steps.step)(state, batch, 1)
    assert np.asarray(state.health).tolist() == want
    assert np.isfinite(float(metrics["param_norm"])) == (nan_step < 0)  # NaN stays once it is in the params


# ------------------------------------------------------------------ configs and run folders (quick)


def test_from_dict_rejects_unknown_keys_and_reports_filled_ones(capsys):
  from experiments import depth_extrap
  from looprec import config as C
  saved = C.to_dict(depth_extrap.smoke())
  with pytest.raises(C.ConfigError, match=r"unknown config key 'train.stepz'"):
    C.from_dict(depth_extrap.Config, {**saved, "train": {**saved["train"], "stepz": 3}})
  old = {**saved, "train": {k: v for k, v in saved["train"].items() if k != "debug_nan_step"}}
  old.pop("deviations"), old.pop("reasons")  # prose: restored silently
  cfg = C.from_saved(depth_extrap.Config, old, "run/config.json")
  assert cfg.train.debug_nan_step == -1 and cfg.train == depth_extrap.smoke().train
  lines = capsys.readouterr().err.strip().splitlines()
  assert lines == ["note: run/config.json has no train.debug_nan_step; using the defaults"], lines


def test_run_folder_names_and_atomic_writes(tmp_path):
  from looprec import runs
  when = 1_700_000_000
  a = runs.make_run_dir(str(tmp_path), "x", "smoke", when)
  b = runs.make_run_dir(str(tmp_path), "x", "smoke", when)
  assert (runs.index_of(a), runs.index_of(b)) == (0, 1)
  assert runs.run_dir_name(str(tmp_path), "x", "smoke", when, 1) == b
  assert os.path.realpath(tmp_path / "x" / "latest") == os.path.realpath(b)
  path = str(tmp_path / "fig.png")
  with pytest.raises(RuntimeError):
    with runs.atomic_path(path) as tmp:
      assert tmp.endswith(".png")
      open(tmp, "w").write("half")
      raise RuntimeError("killed mid-write")
  assert sorted(os.listdir(tmp_path)) == ["x"]


def _read_only(folder) -> bool:
  """Makes folder unwritable (chmod, or the immutable flag for root); False where neither works."""
  os.chmod(folder, 0o555)
  if not os.access(folder, os.W_OK):
    return True
  return subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0


@pytest.mark.parametrize("fault", ["file_in_place", "read_only", "read_only_experiment_folder"])
def test_unusable_runs_folder_is_one_line_exit_2_nothing_written(tmp_path, fault):
  runs_dir = tmp_path / "runs"
  if fault == "file_in_place":
    runs_dir.write_text("not a folder")
  else:
    locked = runs_dir / "depth_extrap" if fault == "read_only_experiment_folder" else runs_dir
    locked.mkdir(parents=True)
    if not _read_only(locked):
      pytest.skip("cannot make a folder read-only here")
  try:
    proc = run_cli(*BASE, "--runs-dir", str(runs_dir))
  finally:
    if fault != "file_in_place":
      subprocess.run(["chattr", "-i", str(locked)], capture_output=True)
      os.chmod(locked, 0o755)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  assert "cannot create a run folder" in lines[0] and str(tmp_path / "runs") in lines[0]
  if fault == "file_in_place":
    assert runs_dir.read_text() == "not a folder"
  else:
    assert [p for p in runs_dir.rglob("*") if p != locked] == []
  record(fault=f"runs folder: {fault}", injected=1, survived=1, lost=0)


def test_resume_of_a_config_with_an_unknown_key_is_one_line(tmp_path):
  from experiments import depth_extrap
  from looprec import config as C
  saved = C.to_dict(depth_extrap.smoke())
  saved["train"]["stepz"] = 1
  (tmp_path / "config.json").write_text(json.dumps({"experiment": "depth_extrap", "preset": "smoke",
                                                     "config": saved}))
  proc = run_cli("experiment", "depth_extrap", "--resume", str(tmp_path))
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr
  assert lines[0] == f"error: {tmp_path / 'config.json'}: unknown config key 'train.stepz'"


# ------------------------------------------------------------------ end to end (slow)


def models_equal(got, expected):
  for name, m in expected["models"].items():
    for key in ("steps", "stages", "params_sum", "accuracy"):
      assert got["models"][name][key] == m[key], (name, key, got["models"][name][key], m[key])


def _uninterrupted(args, runs_dir):
  """(run folder, results) of an uninterrupted run."""
  proc = run_cli(*args, "--runs-dir", runs_dir)
  assert proc.returncode == 0, proc.stderr[-2000:]
  path, results = results_of(proc)
  return os.path.dirname(path), results


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  return _uninterrupted(BASE, str(tmp_path_factory.mktemp("straight")))


def _start(args):
  """A CLI run in the background; faulthandler on, so that a run that hangs can be made to show its stacks."""
  return subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "looprec", *args], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _ckpt_dirs(run_dir):
  return [os.path.join(run_dir, "checkpoints", m) for m in ("looped", "vanilla")]


def _saving(run_dir) -> bool:
  """An orbax temporary folder is on disk: a checkpoint is being written."""
  return any("tmp" in e for d in _ckpt_dirs(run_dir) if os.path.isdir(d) for e in os.listdir(d))


def _steps_mtime(ckpt_dir) -> list[float]:
  """When each finished step folder in ckpt_dir was last modified (seconds since the epoch)."""
  times = []
  for s in os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []:
    if s.isdigit():
      with contextlib.suppress(FileNotFoundError):  # a step the run deletes (keep_checkpoints) while listed
        times.append(os.stat(os.path.join(ckpt_dir, s)).st_mtime)
  return times


def _wait(cond, proc, timeout=600, poll=0.005):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if cond():
      return True
    if proc.poll() is not None:
      return False
    time.sleep(poll)
  proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack on stderr
  raise AssertionError(f"timed out after {timeout} s; where the run was:\n{proc.communicate(timeout=60)[1][-8000:]}")


@pytest.mark.slow
def test_kill_at_random_moments_then_resume_equals_uninterrupted(tmp_path):
  """kill -9 at 10 moments (half of them while a checkpoint is being written), then a SIGTERM (exit 143) and a
  double Ctrl-C (exit 130), resuming after each: the result equals the uninterrupted run bitwise, no orbax
  temporary folder is left, and tensorboard shows every point once."""
  straight = _uninterrupted(LONG, str(tmp_path / "straight"))
  rng = random.Random(12)
  runs_dir, run_dir, log = str(tmp_path / "runs"), None, []
  plan = ["random", "saving"] * 5 + ["sigterm", "double_sigint"]
  for i, how in enumerate(plan):
    args = ["experiment", "depth_extrap", "--resume", run_dir] if run_dir else LONG + ["--runs-dir", runs_dir]
    proc = _start(args)
    if run_dir is None:
      link = os.path.join(runs_dir, "depth_extrap", "latest")
      assert _wait(lambda: os.path.isfile(os.path.join(link, "config.json")), proc, poll=0.05), proc.communicate()
      run_dir = os.path.realpath(link)
    writers = len(glob.glob(os.path.join(run_dir, "tb", "*", "events.*")))  # a new one: training (re)started
    started = _wait(lambda: len(glob.glob(os.path.join(run_dir, "tb", "*", "events.*"))) > writers, proc,
                    poll=0.05)
    if how == "saving":
      hit = _wait(lambda: _saving(run_dir), proc)
    else:
      time.sleep(rng.uniform(0.0, 4.0) if started else 0)
      hit = proc.poll() is None
    saving_now = _saving(run_dir)
    if how in ("random", "saving"):
      proc.kill()
    elif how == "sigterm":
      proc.send_signal(signal.SIGTERM)
    else:
      proc.send_signal(signal.SIGINT)
      time.sleep(0.05)
      proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    steps_on_disk = {os.path.basename(d): sorted(int(s) for s in os.listdir(d) if s.isdigit())
                     for d in _ckpt_dirs(run_dir) if os.path.isdir(d)}
    log.append({"kill": i, "how": how, "hit_running": hit, "while_saving": saving_now, "rc": proc.returncode,
                "steps_on_disk": steps_on_disk})
    if hit and how == "sigterm":
      assert proc.returncode == 143 and "--resume" in err, err[-2000:]
    if hit and how == "double_sigint" and proc.returncode not in (0, 130):
      raise AssertionError(err[-2000:])
    if proc.returncode == 130:
      assert "second Ctrl-C" in err or "interrupted:" in err, err[-2000:]
  final = run_cli("experiment", "depth_extrap", "--resume", run_dir)
  assert final.returncode == 0, final.stderr[-2000:]
  models_equal(results_of(final)[1], straight[1])
  assert not _saving(run_dir)
  for name in ("looped", "vanilla"):
    got, want = tb_points(os.path.join(run_dir, "tb", name)), tb_points(os.path.join(straight[0], "tb", name))
    for tag in THROUGHPUT_TAGS:  # timings, logged where a window of steps was timed: once each, at logged steps
      timed = got.pop(tag, [])
      assert len(timed) == len(set(timed)) and set(timed) <= set(got["train/loss"]), (name, tag)
      want.pop(tag, None)
    assert {t: sorted(s) for t, s in got.items()} == {t: sorted(s) for t, s in want.items()}, name
  print(json.dumps(log, indent=1))
  kills = [r for r in log if r["how"] in ("random", "saving") and r["hit_running"]]
  assert len(kills) >= 10 and sum(r["while_saving"] for r in kills) >= 3, log
  record(fault="kill -9 at a random moment", injected=sum(r["how"] == "random" for r in kills), survived="all",
         lost=0, log=log)
  record(fault="kill -9 while a checkpoint is written", injected=sum(r["while_saving"] for r in kills),
         survived="all", lost=0)


@pytest.mark.slow
def test_corrupt_newest_checkpoint_on_resume_falls_back_and_finishes_equal(tmp_path, straight):
  """Three times: SIGTERM after a checkpoint, then the newest step is truncated / emptied / loses a file; the
  resume names the bad step, uses the next older one, and the finished run equals the uninterrupted one."""
  runs_dir, run_dir, expect = str(tmp_path / "runs"), None, None
  for how in ("truncated", "emptied", "missing_file", None):
    resume = ["experiment", "depth_extrap", "--resume", run_dir]
    if how is None:  # the last resume runs to the end
      proc = run_cli(*resume)
      err = proc.stderr
      assert proc.returncode == 0, err[-2000:]
      models_equal(results_of(proc)[1], straight[1])
    else:
      started = time.time()
      proc = _start(resume if run_dir else BASE + ["--runs-dir", runs_dir])
      if run_dir is None:
        link = os.path.join(runs_dir, "depth_extrap", "latest")
        assert _wait(lambda: os.path.isfile(os.path.join(link, "config.json")), proc, poll=0.05)
        run_dir = os.path.realpath(link)
      looped = os.path.join(run_dir, "checkpoints", "looped")
      # two steps, the newest written by this run: by time, not by name (it writes a set-aside step's number again)
      ready = lambda times: len(times) >= 2 and max(times) >= started
      assert _wait(lambda: ready(_steps_mtime(looped)), proc, poll=0.05), proc.communicate()
      proc.send_signal(signal.SIGTERM)
      _, err = proc.communicate(timeout=600)
      assert proc.returncode == 143, err[-2000:]
    if expect:  # this resume named the step corrupted before it and used the next older one
      assert f"step {expect[0]} is unreadable" in err and f"using step {expect[1]}" in err, err[-3000:]
      record(fault=f"newest checkpoint {expect[2]} (end to end)", injected=1, survived=1, lost=0)
    if how is not None:
      steps = sorted((int(s) for s in os.listdir(looped) if s.isdigit()), reverse=True)
      assert len(steps) == 2, steps  # keep_checkpoints=2: an older step to fall back to
      corrupt(os.path.join(looped, str(steps[0])), how)
      expect = (steps[0], steps[1], how)


@pytest.mark.slow
def test_several_steps_per_call_stopped_and_resumed_equal_one_step_per_call(tmp_path, straight):
  """train.steps_per_call=7 (calls cut short at logs, evaluations and checkpoints), SIGTERM after a checkpoint,
  then a resume: the finished run equals the uninterrupted one-step-per-call run."""
  runs_dir = str(tmp_path / "runs")
  proc = _start(BASE + ["train.steps_per_call=7", "--runs-dir", runs_dir])
  looped = os.path.join(runs_dir, "depth_extrap", "latest", "checkpoints", "looped")
  assert _wait(lambda: os.path.isdir(looped) and any(s.isdigit() for s in os.listdir(looped)), proc, poll=0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 143, err[-2000:]
  resumed = run_cli("experiment", "depth_extrap", "--resume", os.path.realpath(os.path.dirname(os.path.dirname(
      looped))))
  assert resumed.returncode == 0 and "looped: resuming at step" in resumed.stderr, resumed.stderr[-2000:]
  models_equal(results_of(resumed)[1], straight[1])


@pytest.mark.slow
def test_nan_stops_with_one_line_and_the_newest_checkpoint_is_finite(tmp_path, straight):
  from looprec import checkpoint
  proc = run_cli(*BASE, "train.debug_nan_step=57", "--runs-dir", str(tmp_path))
  errors = error_lines(proc.stderr)
  assert proc.returncode == 3 and len(errors) == 1, proc.stderr[-2000:]
  assert errors[0] == ("error: looped: non-finite grad_norm at step 57; nothing after it was saved; "
                       "the newest checkpoint is step 40"), errors
  assert "NaN or Inf" not in proc.stderr  # nothing non-finite reached tensorboard
  run_dir = os.path.realpath(tmp_path / "depth_extrap" / "latest")
  looped = os.path.join(run_dir, "checkpoints", "looped")
  assert sorted(int(s) for s in os.listdir(looped) if s.isdigit()) == [20, 40]
  params, _ = checkpoint.restore_params(looped)
  assert all(np.isfinite(np.asarray(x)).all() for x in __import__("jax").tree_util.tree_leaves(params))
  assert not os.path.exists(os.path.join(run_dir, "results.json"))
  resumed = run_cli("experiment", "depth_extrap", "--resume", run_dir, "train.debug_nan_step=-1")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  models_equal(results_of(resumed)[1], straight[1])  # the NaN cost nothing but the steps after step 40
  record(fault="NaN injected at a chosen step", injected=1, survived=1, lost=0)


@pytest.mark.slow
def test_finished_run_resumed_with_more_steps_continues(tmp_path, straight):
  run_dir = str(tmp_path / "run")
  shutil.copytree(straight[0], run_dir, symlinks=True)
  proc = run_cli("experiment", "depth_extrap", "--resume", run_dir, "train.steps=160")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "looped: resuming at step 120 of 160" in proc.stderr
  assert "vanilla: already trained 40 steps" in proc.stderr
  assert results_of(proc)[1]["models"]["looped"]["steps"] == 160


# ------------------------------------------------------------------ two processes (slow)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def start_processes(args, n=2, devices_each=2):
  """n `python -m looprec` processes joined by jax.distributed on this machine (CPU, gloo collectives)."""
  port = _free_port()
  procs = []
  for i in range(n):
    env = {**os.environ, "JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": str(n),
           "JAX_PROCESS_ID": str(i), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_each}"}
    procs.append(subprocess.Popen([sys.executable, "-m", "looprec", *args], cwd=ROOT, env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE))
  return procs


@pytest.mark.slow
def test_two_processes_train_like_one_stop_together_and_resume(tmp_path):
  """2 processes x 2 CPU devices: the smoke run equals one process with 4 devices (same stages and accuracies;
  parameters to float rounding, the cross-process gradient sum adds in another order); SIGTERM to process 1
  makes both checkpoint and exit 143; the resumed pair finishes equal to the uninterrupted pair, bitwise; one
  run folder."""
  one = run_cli(*BASE, "--runs-dir", str(tmp_path / "one"),
                env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"})
  assert one.returncode == 0, one.stderr[-2000:]
  single = results_of(one)[1]

  procs = start_processes(BASE + ["--runs-dir", str(tmp_path / "two")])
  outs = [p.communicate(timeout=1200) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
  pair = results_of(subprocess.CompletedProcess([], 0, outs[0][0], outs[0][1]))[1]
  assert "results:" not in outs[1][0]  # only process 0 reports
  for name, m in single["models"].items():
    assert pair["models"][name]["steps"] == m["steps"] and pair["models"][name]["stages"] == m["stages"]
    assert pair["models"][name]["accuracy"] == m["accuracy"], name
    np.testing.assert_allclose(pair["models"][name]["params_sum"], m["params_sum"], rtol=1e-5)
  assert len([d for d in os.listdir(tmp_path / "two" / "depth_extrap") if d != "latest"]) == 1

  procs = start_processes(BASE + ["--runs-dir", str(tmp_path / "cut")])
  link = tmp_path / "cut" / "depth_extrap" / "latest"
  assert _wait(lambda: link.exists() and os.path.isdir(link / "checkpoints" / "looped")
               and any(s.isdigit() for s in os.listdir(link / "checkpoints" / "looped")), procs[1], poll=0.05)
  procs[1].send_signal(signal.SIGTERM)
  outs = [p.communicate(timeout=600) for p in procs]
  assert [p.returncode for p in procs] == [143, 143], outs[0][1][-2000:] + outs[1][1][-2000:]
  run_dir = os.path.realpath(link)
  assert len([d for d in os.listdir(tmp_path / "cut" / "depth_extrap") if d != "latest"]) == 1
  assert not os.path.exists(os.path.join(run_dir, "results.json"))
  procs = start_processes(["experiment", "depth_extrap", "--resume", run_dir])
  outs = [p.communicate(timeout=1200) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
  models_equal(results_of(subprocess.CompletedProcess([], 0, outs[0][0], outs[0][1]))[1], pair)
  record(fault="SIGTERM to one of two processes", injected=1, survived=1, lost=0)


@pytest.mark.slow
def test_checkpoint_that_does_not_fit_the_data_is_one_line(tmp_path, straight):
  """The run folder's data changed under its checkpoints (here: config.json edited to a larger graph)."""
  run_dir = str(tmp_path / "run")
  shutil.copytree(straight[0], run_dir, symlinks=True)
  saved = json.load(open(os.path.join(run_dir, "config.json")))
  saved["config"]["data"]["n_entities"] += 1
  open(os.path.join(run_dir, "config.json"), "w").write(json.dumps(saved))
  for args in (["experiment", "depth_extrap", "--resume", run_dir], ["analyze", run_dir]):
    proc = run_cli(*args)
    errors = error_lines(proc.stderr)
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert "looped step 120 was trained on data with vocab_size=" in errors[0], errors
  record(fault="checkpoint does not fit the data", injected=2, survived=2, lost=0)
