"""The CLI explains itself: `experiment --help` lists experiments, presets and kinds; an unknown name lists the
valid ones (closest first); a repeated override key is an error; `--show-config` shows what each override reaches;
the resume hint names this python; a second Ctrl-C prints one line naming the run folder."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from looprec import cli, experiment, train
from looprec import config as C
from experiments import depth_extrap


def run_main(capsys, *args):
  """(exit code, stdout, stderr lines) of cli.main in this process; --help's SystemExit(0) is exit code 0."""
  try:
    code = cli.main(list(args))
  except SystemExit as e:
    code = e.code
  out, err = capsys.readouterr()
  return code, out, err.strip().splitlines()


def test_experiment_help_lists_experiments_presets_measured_times_and_kinds(capsys):
  code, out, _ = run_main(capsys, "experiment", "--help")
  assert code == 0
  for name in ("depth_extrap", "systematicity", "variants"):
    assert f"\n  {name}: " in out
    for preset in experiment.load(name).PRESETS:
      line = next(l for l in out.splitlines() if l.strip(" *").startswith(f"{preset}:") and l.startswith("    "))
      assert len(line.split(": ", 1)[1]) > 10, line  # a description, not just the name
  assert "*cpu: The default" in out  # the default preset is marked
  for kind in C.KINDS:
    assert f"\n  {kind}: " in out
  with open(os.path.join(ROOT, "results", "depth_extrap_cpu.json")) as f:
    wall = json.load(f)["aggregate"]["wall_seconds"]
  assert f"measured {round(wall['min'])}-{round(wall['max'])} s per seed on 2 CPUs (results/depth_extrap_cpu.json)" in out
  cpu_long = next(l for l in out.splitlines() if l.strip().startswith("cpu_long:"))
  assert "measured" not in cpu_long  # its summary ran with train.steps=50000: not the preset's cost


def test_top_level_help_is_whole_sentences(capsys):
  code, out, _ = run_main(capsys, "--help")
  assert code == 0 and cli.DESCRIPTION.split()[0] in out
  assert not cli.DESCRIPTION.rstrip().endswith((",", "and")) and cli.DESCRIPTION.endswith(".")


def test_experiment_alone_names_the_experiments_not_optional_overrides(capsys):
  code, _, err = run_main(capsys, "experiment")
  assert code == 2 and len(err) == 1, err
  assert "overrides" not in err[0] and ", ".join(experiment.names()) in err[0], err


@pytest.mark.parametrize("args, want", [
    (["experiment", "depth_extra"], "unknown experiment 'depth_extra' (have depth_extrap, "),
    (["experiment", "depth_extrap", "--preset", "smok"], "unknown preset 'smok' for depth_extrap (have smoke, "),
    (["experiment", "depth_extrap", "--preset", "smoke", "train.stepz=3"],
     "unknown config key 'train.stepz' (have train.steps, "),
    (["experiment", "depth_extrap", "--preset", "smoke", "models.vanila.steps=3"],
     "unknown config key 'models.vanila.steps' (have models.vanilla, models.looped)"),
    (["experiment", "depth_extrap", "--preset", "smoke", "model.kind=loopd"],
     "model.kind='loopd' is not one of looped, "),
    (["experiment", "depth_extrap", "--preset", "smoke", "model.pos_emb=rop"],
     "model.pos_emb='rop' is not one of rope, "),
    (["experiment", "depth_extrap", "--preset", "smoke", "train.remat=dot"],
     "train.remat='dot' is not one of dots, "),
    (["experiment", "depth_extrap", "--preset", "smoke", "train.steps.x=1"],
     "unknown config key 'train.steps.x' (train.steps is a value, not a group of keys)"),
    (["analyze", "no/such/run", "--policy", "kl_entropy_re"],
     "unknown halting policy 'kl_entropy_re' (have kl_entropy_rel, kl_entropy, "),
    (["analyze", "no/such/run", "--policy", "kl:epz=1"], "halting policy 'kl' has no parameter 'epz' (have eps)"),
    (["tables", "--check", "x=1"], "unrecognized arguments: x=1"),
])
def test_an_unknown_name_lists_the_valid_ones_closest_first(capsys, tmp_path, args, want):
  if args[0] == "experiment":
    args = [*args, "--runs-dir", str(tmp_path)]
  code, _, err = run_main(capsys, *args)
  assert code == 2 and len(err) == 1 and err[0].startswith("error: " + want), err
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize("override, want", [
    ("data.name=sorting", "data.name='sorting' is not a registered task (addition, copy, p_hop, parity)"),
    ("data.seq_len=7", "data.seq_len=7 holds difficulties up to 6 for data.name=parity, not 8"),
    ("data.ood=3,8", "data.ood='3,8': difficulty 3 is inside the training range (data.train_max=4)"),
    ("models.looped.recurrence=difficulty:0", "models.looped.recurrence 'difficulty:0': loop counts must satisfy"),
])
def test_bad_task_input_is_one_error_line_naming_the_field(capsys, tmp_path, override, want):
  """An unknown task, a difficulty seq_len cannot hold, an OOD split inside the training range: exit 2 before any
  run folder is made."""
  code, _, err = run_main(capsys, "experiment", "length_gen", "--preset", "smoke", override, "--runs-dir", str(tmp_path))
  assert code == 2 and len(err) == 1 and err[0].startswith("error: " + want), err
  assert not os.listdir(tmp_path)


def test_choices_puts_the_closest_first_and_keeps_every_value():
  assert C.choices("cpu_lon", ["smoke", "cpu", "cpu_long", "paper"]) == "cpu_long, cpu, smoke, paper"
  assert C.choices("zzz", ["b", "a"]) == "b, a"


def test_a_repeated_override_key_is_an_error(capsys, tmp_path):
  code, _, err = run_main(capsys, "experiment", "depth_extrap", "--preset", "smoke", "train.lr=1e-3",
                          "train.lr=2e-3", "--runs-dir", str(tmp_path))
  assert code == 2 and err == ["error: override key 'train.lr' given twice (train.lr=1e-3 and train.lr=2e-3); give "
                               "it once"]
  assert not os.listdir(tmp_path)


def test_show_config_shows_each_models_budget_and_what_each_override_reaches(capsys, tmp_path):
  code, out, err = run_main(capsys, "experiment", "depth_extrap", "--preset", "smoke", "--show-config",
                            "train.steps=60", "model.d_model=16", "--runs-dir", str(tmp_path))
  assert code == 0 and not err and not os.listdir(tmp_path)  # nothing runs, nothing is written
  config_json, rest = out.split("\n\n", 1)
  assert json.loads(config_json)["train"]["steps"] == 60 and json.loads(config_json)["model"]["d_model"] == 16
  assert "  looped: kind=looped, n_layers=1, recurrence=dynamic:2,1,3, steps=60 (train.steps)" in rest
  assert "  vanilla: kind=looped, n_layers=2, recurrence=fixed:1, steps=100 (models.vanilla.steps)" in rest
  assert "  train.steps=60: applies to looped; not to vanilla (its own models.vanilla.steps=100)" in rest
  assert "  model.d_model=16: applies to looped, vanilla" in rest


def test_override_notes_name_the_models_an_override_leaves_as_they_were():
  cfg = C.override(depth_extrap.smoke(), ["models.vanilla.model=kind=exit_gate,exit_beta=0.1"])
  notes = experiment.override_notes(cfg, ["train.steps=60", "model.kind=looped", "model.d_model=16",
                                          "models.looped.steps=5"])
  assert notes == [
      "note: train.steps=60 does not change vanilla (its own models.vanilla.steps=100); it applies to looped",
      "note: model.kind=looped does not change vanilla (its own models.vanilla.model sets kind=exit_gate); it "
      "applies to looped"]
  assert experiment.override_reach(cfg, "models.looped.steps=5") == (["looped"], [])


def test_show_config_names_the_kind_of_a_model_that_sets_its_own(capsys):
  code, out, _ = run_main(capsys, "experiment", "variants", "--preset", "smoke", "--show-config")
  assert code == 0
  for name, mrun in experiment.resolve(experiment.load("variants"), "smoke")[1].models.items():
    kind = dict(o.partition("=")[::2] for o in mrun.model_overrides()).get("kind", "looped")
    assert f"  {name}: kind={kind}, " in out


def test_python_command_is_the_python_that_ran(monkeypatch, tmp_path):
  inside = tmp_path / ".venv" / "bin" / "python"
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, "executable", str(inside))
  assert cli.python_command() == os.path.join(".venv", "bin", "python") + " -m looprec"
  monkeypatch.setattr(sys, "executable", "/opt/py/bin/python3")
  assert cli.python_command() == "/opt/py/bin/python3 -m looprec"


def test_resume_hint_names_this_python_and_the_run_folder(monkeypatch, capsys):
  def interrupted(*_):
    raise train.Interrupted("looped stopped at step 5; checkpoint saved", "/runs/x", signal.SIGTERM)
  monkeypatch.setattr(experiment, "run", interrupted)
  code, _, err = run_main(capsys, "experiment", "depth_extrap")
  assert code == 143 and err == [f"interrupted: looped stopped at step 5; checkpoint saved; resume with: "
                                 f"{cli.python_command()} experiment depth_extrap --resume /runs/x"]


def test_second_ctrl_c_is_one_line_naming_the_run_folder(monkeypatch, capsys):
  def stopped(*_):
    raise experiment.StoppedAtOnce("/runs/x")

  def exit_now(code):
    raise SystemExit(code)
  monkeypatch.setattr(experiment, "run", stopped)
  monkeypatch.setattr(os, "_exit", exit_now)
  code, _, err = run_main(capsys, "experiment", "depth_extrap")
  assert code == 130 and err == ["interrupted: a second Ctrl-C stopped at once, without a checkpoint; resume "
                                 f"/runs/x from its last checkpoint with: {cli.python_command()} experiment "
                                 "depth_extrap --resume /runs/x"]


def test_an_error_unwinding_after_a_second_ctrl_c_is_the_same_one_line(tmp_path, monkeypatch, capsys):
  """After the second SIGINT, an exception other than KeyboardInterrupt (orbax's interrupted commit thread raises
  `RuntimeError: cannot schedule new futures after shutdown` through future.result()) stops the run the same
  way: exit 130, one line, no traceback. An error before the second SIGINT stays an error."""
  def interrupted_twice_then_broken(cfg, run_dir):
    os.kill(os.getpid(), signal.SIGINT)
    try:
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(30)  # not reached: the second SIGINT raises KeyboardInterrupt here
    finally:
      raise RuntimeError("cannot schedule new futures after shutdown")

  def broken_after_one_sigint(cfg, run_dir):
    os.kill(os.getpid(), signal.SIGINT)
    raise RuntimeError("a real bug")

  def exit_now(code):
    raise SystemExit(code)
  before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the tests run in the background
  monkeypatch.setattr(os, "_exit", exit_now)
  monkeypatch.setattr(cli.compile_cache, "enable", lambda: None)
  monkeypatch.setattr(depth_extrap, "run", interrupted_twice_then_broken)
  code, _, err = run_main(capsys, "experiment", "depth_extrap", "--preset", "smoke", "--runs-dir", str(tmp_path))
  run_dir = os.path.realpath(tmp_path / "depth_extrap" / "latest")
  assert code == 130 and len(err) == 1 and err[0].startswith("interrupted: a second Ctrl-C"), err
  assert err[0].endswith(f"--resume {run_dir}")
  monkeypatch.setattr(depth_extrap, "run", broken_after_one_sigint)
  with pytest.raises(RuntimeError, match="a real bug"):
    cli.main(["experiment", "depth_extrap", "--preset", "smoke", "--runs-dir", str(tmp_path)])
  assert signal.getsignal(signal.SIGINT) == before


@pytest.mark.slow
def test_second_ctrl_c_while_a_checkpoint_is_written_prints_no_traceback(tmp_path):
  """A real run, two SIGINTs 50 ms apart while orbax writes a checkpoint: exit 130 and, beside the progress bars
  and the note on train.steps, the one line; no traceback from the checkpoint writer's threads."""
  runs = str(tmp_path)
  proc = subprocess.Popen([sys.executable, "-m", "looprec", "experiment", "depth_extrap", "--preset", "smoke",
                           "--runs-dir", runs, "train.checkpoint_every=10", "train.steps=400"], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if any("tmp" in p for p in glob.glob(f"{runs}/depth_extrap/*/checkpoints/*/*")):
      break
    time.sleep(0.003)
  proc.send_signal(signal.SIGINT)
  time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  lines = [l for l in err.replace("\r", "\n").splitlines() if l.strip() and "it/s" not in l and "s/it" not in l
           and not l.startswith("note: ")]
  run_dir = os.path.realpath(os.path.join(runs, "depth_extrap", "latest"))
  assert proc.returncode == 130 and len(lines) == 1, err[-3000:]
  assert lines[0].startswith("interrupted: a second Ctrl-C") and f"--resume {run_dir}" in lines[0], lines
