"""End to end through the CLI: the smoke preset trains, checkpoints, is killed, resumes and evaluates."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, results_of, run_cli

SMALL = ["train.steps=120", "train.checkpoint_every=40", "train.eval_every=40", "models.vanilla.steps=40"]


def check_contract(results, preset):
  assert results["experiment"] == "depth_extrap" and results["preset"] == preset
  assert isinstance(results["wall_seconds"], float)
  for m in results["models"].values():
    assert isinstance(m["n_layers"], int) and m["n_layers"] >= 1
    assert m["train_loops"].startswith(("fixed:", "dynamic:"))
    assert isinstance(m["trained_max_hop"], int) and isinstance(m["steps"], int)
    for split, by_r in m["accuracy"].items():
      assert split in ("atomic", "atomic_val") or split.endswith(("hop_test", "hop_val"))
      assert all(k.isdigit() and 0.0 <= v <= 1.0 for k, v in by_r.items())


def test_smoke_preset_end_to_end(tmp_path):
  proc = run_cli("experiment", "depth_extrap", "--preset", "smoke", "--runs-dir", str(tmp_path))
  assert proc.returncode == 0, proc.stderr[-2000:]
  path, results = results_of(proc)
  check_contract(results, "smoke")
  run_dir = os.path.dirname(path)
  assert os.path.realpath(tmp_path / "depth_extrap" / "latest") == os.path.realpath(run_dir)
  assert os.path.basename(run_dir).startswith("smoke-")
  files = os.listdir(run_dir)
  assert {"config.json", "results.json", "report.md", "accuracy_hop_by_loops.png", "checkpoints", "tb"} <= set(files)
  assert os.listdir(os.path.join(run_dir, "tb", "looped"))
  assert set(results["models"]) == {"looped", "vanilla"}
  assert results["models"]["looped"]["steps"] == 200
  assert len(results["models"]["looped"]["accuracy"]) == 10  # hops 1..5, test and validation
  assert len(results["models"]["looped"]["accuracy"]["3hop_test"]) == 8  # R = 1..8


def _wait_for_checkpoint(ckpt_dir, proc, timeout=180):
  deadline = time.time() + timeout
  while time.time() < deadline:
    steps = [d for d in os.listdir(ckpt_dir) if d.isdigit()] if os.path.isdir(ckpt_dir) else []
    if steps:
      return steps
    assert proc.poll() is None, proc.communicate()
    time.sleep(0.2)
  raise AssertionError("no checkpoint appeared")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_to_the_same_result(tmp_path, sig):
  base = ["experiment", "depth_extrap", "--preset", "smoke", *SMALL]
  straight = run_cli(*base, "--runs-dir", str(tmp_path / "a"))
  assert straight.returncode == 0, straight.stderr[-2000:]
  _, expected = results_of(straight)

  env = {**os.environ}
  proc = subprocess.Popen([sys.executable, "-m", "looprec", *base, "--runs-dir", str(tmp_path / "b")], cwd=ROOT,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  run_dir, deadline = None, time.time() + 120
  while run_dir is None:
    link = tmp_path / "b" / "depth_extrap" / "latest"
    run_dir = os.path.realpath(link) if link.exists() else None
    assert proc.poll() is None and time.time() < deadline, proc.communicate()
    time.sleep(0.1)
  _wait_for_checkpoint(os.path.join(run_dir, "checkpoints", "looped"), proc)
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=120)
  if sig == signal.SIGTERM:
    assert proc.returncode == 143 and "--resume" in err
  assert not os.path.exists(os.path.join(run_dir, "results.json"))

  resumed = run_cli("experiment", "depth_extrap", "--resume", run_dir)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  _, got = results_of(resumed)
  same_models(got, expected)


def same_models(got, expected):
  for name, m in expected["models"].items():
    for key in ("steps", "stages", "params_sum", "accuracy"):
      assert got["models"][name][key] == m[key], (name, key)


def test_time_budget_then_resume_finishes_the_same_run(tmp_path):
  """A run cut by train.max_minutes is complete (results written); resuming with the same budget adds no step
  (and writes no checkpoint), resuming without a budget finishes exactly as an uncut run."""
  base = ["experiment", "depth_extrap", "--preset", "smoke", *SMALL]
  straight = run_cli(*base, "--runs-dir", str(tmp_path / "a"))
  assert straight.returncode == 0, straight.stderr[-2000:]
  cut = run_cli(*base, "train.max_minutes=0.0001", "--runs-dir", str(tmp_path / "b"))
  assert cut.returncode == 0, cut.stderr[-2000:]
  path, partial = results_of(cut)
  assert partial["models"]["looped"]["steps"] < 120
  run_dir = os.path.dirname(path)
  again = run_cli("experiment", "depth_extrap", "--resume", run_dir)
  assert again.returncode == 0, again.stderr[-2000:]
  assert results_of(again)[1]["models"]["looped"]["steps"] == partial["models"]["looped"]["steps"]
  finished = run_cli("experiment", "depth_extrap", "--resume", run_dir, "train.max_minutes=0")
  assert finished.returncode == 0, finished.stderr[-2000:]
  same_models(results_of(finished)[1], results_of(straight)[1])


def test_resume_refuses_changes_that_break_it(tmp_path):
  proc = run_cli("experiment", "depth_extrap", "--resume", str(tmp_path))
  assert proc.returncode == 2 and "no config.json" in proc.stderr
  (tmp_path / "config.json").write_text(json.dumps({"experiment": "depth_extrap", "preset": "smoke",
                                                     "config": {}}))
  proc = run_cli("experiment", "depth_extrap", "--resume", str(tmp_path), "train.batch_size=16")
  assert proc.returncode == 2 and "'train.batch_size=16'" in proc.stderr


BAD = [
    (["nope"], "unknown experiment 'nope'"),
    (["depth_extrap", "--preset", "huge"], "unknown preset 'huge'"),
    (["depth_extrap", "train.stepz=5"], "unknown config key 'train.stepz'"),
    (["depth_extrap", "train.steps=many"], "train.steps='many': expected int"),
    (["depth_extrap", "models.looped.recurrence=fixed:0"], "R >= 1"),
    (["depth_extrap", "eval.max_loops=0"], "eval.max_loops=0"),
    (["depth_extrap", "eval.max_hop=30"], "eval.max_hop=30"),
    (["depth_extrap", "data.curriculum.last_hop=20"], "data.curriculum.last_hop=20"),
    (["depth_extrap", "data.curriculum.first_hop=5"], "data.curriculum.first_hop=5"),
    (["depth_extrap", "data.source=/no/such/folder"], "does not exist"),
    (["depth_extrap", "model.d_model=33"], "not divisible"),
    (["depth_extrap", "--bogus"], "unrecognized arguments: --bogus"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_input_one_line_error_and_nothing_written(tmp_path, args, message):
  preset = [] if "--preset" in args else ["--preset", "smoke"]
  proc = run_cli("experiment", *args, *preset, "--runs-dir", str(tmp_path))
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  assert message in lines[0]
  assert not os.listdir(tmp_path)


def test_batch_must_divide_over_devices(tmp_path):
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  proc = run_cli("experiment", "depth_extrap", "--preset", "smoke", "train.batch_size=30", "--runs-dir",
                 str(tmp_path), env=env)
  assert proc.returncode == 2 and proc.stderr.strip() == "error: train.batch_size=30 does not divide over 4 devices"
  assert not os.listdir(tmp_path)


def test_malformed_data_folder(tmp_path):
  folder = tmp_path / "ds"
  folder.mkdir()
  (folder / "vocab.json").write_text(json.dumps(["<e_0>", "<e_1>", "<r_0>", "</a>"]))
  (folder / "train.json").write_text(json.dumps([{"input_text": "<e_0><r_0>", "target_text": "<e_0><r_0><e_1></a>"}]))
  (folder / "test.json").write_text(json.dumps([{"input_text": "<e_0><r_9>", "target_text": "<e_0><r_9><e_1></a>",
                                                  "type": "atomic"}]))
  runs = tmp_path / "runs"
  proc = run_cli("experiment", "depth_extrap", "--preset", "smoke", f"data.source={folder}", "--runs-dir", str(runs))
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and "'<r_9>'" in lines[0] and "test.json" in lines[0], proc.stderr
  (folder / "test.json").write_text("[{not json")
  proc = run_cli("experiment", "depth_extrap", "--preset", "smoke", f"data.source={folder}", "--runs-dir", str(runs))
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and "test.json" in lines[0], proc.stderr
  assert not runs.exists() or not os.listdir(runs)
