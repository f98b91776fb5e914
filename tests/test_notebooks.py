"""The notebooks: stripped, in sync with their jupytext sources, public API only, a correct install cell; and,
under `make notebooks` (marker `notebooks`), executed headless in smoke mode with their figures."""
from __future__ import annotations

import ast
import json
import os
import pathlib
import sys
import time
import tomllib

import jupytext
import nbformat
import pytest
from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["depth_extrapolation", "systematicity", "inference_depth", "decoding", "paper_scale_tpu"]
EXECUTED = ROOT / "runs" / "notebooks"  # executed copies, for a look after `make notebooks`


def source(name: str) -> nbformat.NotebookNode:
  return jupytext.read(NOTEBOOKS / f"{name}.py", fmt="py:percent")


def committed(name: str) -> nbformat.NotebookNode:
  return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def code_cells(nb):
  return [c for c in nb.cells if c.cell_type == "code"]


def tagged(nb, tag: str):
  return [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]


def python_of(cell) -> str:
  """A code cell's source without IPython magics (commented out, as jupytext writes them in .py)."""
  return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in cell.source.splitlines())


def test_every_notebook_has_a_source_and_nothing_else_is_there():
  assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)
  assert sorted(p.stem for p in NOTEBOOKS.glob("*.py")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_committed_without_outputs(name):
  nb = committed(name)
  for cell in code_cells(nb):
    assert cell.outputs == [] and cell.execution_count is None, f"{name}: a cell keeps outputs: {cell.source[:60]!r}"
  assert nbformat.validate(nb) is None


@pytest.mark.parametrize("name", NAMES)
def test_ipynb_in_sync_with_its_jupytext_source(name):
  """The .py (percent format) is the source; `make notebooks-sync` writes the .ipynb from it."""
  want, got = source(name), committed(name)
  shape = lambda nb: [(c.cell_type, c.source, c.get("metadata", {}).get("tags", [])) for c in nb.cells]
  assert shape(got) == shape(want), f"notebooks/{name}.ipynb is stale: run `make notebooks-sync`"
  assert got.metadata.get("accelerator") == "TPU"  # Colab asks for a TPU runtime when it opens the notebook


@pytest.mark.parametrize("name", NAMES)
def test_public_api_only(name):
  """Imports from looprec are `from looprec import <public names>` (looprec.experiment included); no
  underscore name is defined or reached anywhere, so no private helper or module internal is used."""
  import looprec  # pylint: disable=import-outside-toplevel
  for cell in code_cells(source(name)):
    tree = ast.parse(python_of(cell))
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("looprec", "experiments"):
        assert node.module == "looprec", f"{name}: from {node.module} import ..."
        for alias in node.names:
          assert alias.name == "experiment" or alias.name in looprec.__all__, f"{name}: looprec.{alias.name}"
      if isinstance(node, ast.Import):
        assert not any(a.name.split(".")[0] in ("looprec", "experiments") for a in node.names), f"{name}: import"
      if isinstance(node, ast.Attribute):
        assert not node.attr.startswith("_"), f"{name}: .{node.attr}"
      if isinstance(node, ast.Name):
        assert not node.id.startswith("_"), f"{name}: {node.id}"


@pytest.mark.parametrize("name", NAMES)
def test_one_parameters_cell_with_a_smoke_switch(name):
  nb = source(name)
  params = tagged(nb, "parameters")
  assert len(params) == 1
  assigned = {t.id for node in ast.parse(params[0].source).body for t in node.targets}
  assert {"SMOKE", "RUNS_ROOT"} <= assigned
  assert tagged(nb, "figure"), f"{name}: no cell is tagged as drawing a figure"


def test_the_install_cell_is_the_same_first_cell_everywhere():
  first = [code_cells(source(name))[0].source for name in NAMES]
  assert all(cell == first[0] for cell in first) and "LOOPREC_SOURCE" in first[0]


def run_install_cell(monkeypatch, source_value: str, env: dict, importable: bool, nvidia: bool = False):
  """Executes the install cell with looprec (not) importable and pip replaced by a recorder."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  import shutil  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  cell = code_cells(source(NAMES[0]))[0].source
  head, _, rest = cell.partition("\n")
  assert head.startswith("LOOPREC_SOURCE = ")
  calls, real_find_spec = [], importlib.util.find_spec
  for key in ("COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE"):
    monkeypatch.delenv(key, raising=False)
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda n, *a: real_find_spec(n, *a) if importable or n not in ("looprec", "libtpu") else None)
  monkeypatch.setattr(subprocess, "run", lambda args, check: calls.append(args))
  monkeypatch.setattr(shutil, "which", lambda cmd: "/usr/bin/nvidia-smi" if nvidia and cmd == "nvidia-smi" else None)
  monkeypatch.setattr(os.path, "exists", lambda p: False)
  exec(f"LOOPREC_SOURCE = {source_value!r}\n{rest}", {})  # pylint: disable=exec-used
  return calls


def extras():
  return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_install_cell_does_nothing_where_looprec_is_importable(monkeypatch):
  assert run_install_cell(monkeypatch, "git+https://example.org/looprec.git", {"COLAB_TPU_ADDR": "x"}, True) == []


@pytest.mark.parametrize("env,nvidia,extra", [({"COLAB_TPU_ADDR": "10.0.0.2:8470"}, False, "tpu"),
                                              ({"TPU_ACCELERATOR_TYPE": "v5litepod-1"}, False, "tpu"),
                                              ({}, True, "cuda"), ({}, False, None)])
@pytest.mark.parametrize("where", ["git+https://example.org/looprec.git", "."])
def test_install_cell_installs_looprec_with_the_accelerator_extra(monkeypatch, capsys, env, nvidia, extra, where):
  calls = run_install_cell(monkeypatch, where, env, False, nvidia)
  assert ("Restart session" in capsys.readouterr().out) == (extra == "tpu")  # the TPU runtime's reinstalled jax
  assert len(calls) == 1 and calls[0][:5] == [sys.executable, "-m", "pip", "install", "-q"]
  req = Requirement(calls[0][5])
  assert req.name == "looprec" and req.extras == ({extra} if extra else set())
  assert req.url == (where if "://" in where else pathlib.Path(".").resolve().as_uri())
  if extra:
    assert extra in extras()


def test_install_cell_without_a_source_says_what_to_set(monkeypatch, tmp_path):
  with pytest.raises(SystemExit, match="LOOPREC_SOURCE=.* is no folder: upload your copy"):
    run_install_cell(monkeypatch, str(tmp_path / "looprec"), {}, False)
  cell = code_cells(source(NAMES[0]))[0].source
  assert cell.startswith('LOOPREC_SOURCE = "/content/looprec"')  # where the upload the setup text describes lands


def test_accelerator_extras_stay_within_the_jax_pin():
  deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
  jax_pin = next(Requirement(d).specifier for d in deps if Requirement(d).name == "jax")
  for extra, jax_extra in (("tpu", "tpu"), ("cuda", "cuda12")):
    (req,) = [Requirement(d) for d in extras()[extra]]
    assert req.name == "jax" and req.extras == {jax_extra} and req.specifier == jax_pin


@pytest.fixture(scope="session")
def kernel_manager_factory(tmp_path_factory):
  """Kernels run this interpreter (the project venv's python), whatever kernelspecs the machine has."""
  from jupyter_client.kernelspec import KernelSpecManager  # pylint: disable=import-outside-toplevel
  from jupyter_client.manager import KernelManager  # pylint: disable=import-outside-toplevel
  kernels = tmp_path_factory.mktemp("kernels")
  (kernels / "looprec").mkdir()
  (kernels / "looprec" / "kernel.json").write_text(json.dumps(
      {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"], "display_name": "looprec",
       "language": "python"}))
  return lambda: KernelManager(kernel_name="looprec", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))


def execute(name: str, workdir: pathlib.Path, kernel_manager) -> tuple[nbformat.NotebookNode, float]:
  """Runs a committed notebook with SMOKE on and run folders under workdir, papermill style: a cell tagged
  `injected-parameters` after the parameters cell overrides them."""
  from nbclient import NotebookClient  # pylint: disable=import-outside-toplevel
  nb = committed(name)
  at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
  injected = nbformat.v4.new_code_cell(f"SMOKE = True\nRUNS_ROOT = {str(workdir / 'runs')!r}")
  injected.metadata["tags"] = ["injected-parameters"]
  nb.cells.insert(at + 1, injected)
  start = time.perf_counter()
  try:
    NotebookClient(nb, km=kernel_manager, timeout=900, resources={"metadata": {"path": str(workdir)}}).execute()
  finally:
    EXECUTED.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, EXECUTED / f"{name}.ipynb")
  return nb, time.perf_counter() - start


@pytest.mark.notebooks
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_headless_and_draws_its_figures(name, tmp_path, kernel_manager_factory):
  nb, seconds = execute(name, tmp_path, kernel_manager_factory())
  print(f"\n{name}: {seconds:.0f} s")
  figures = tagged(nb, "figure")
  for cell in figures:
    kinds = {k for out in cell.outputs for k in out.get("data", {})}
    assert "image/png" in kinds, f"{name}: no figure from {cell.source[:80]!r}"
  assert all(out.output_type != "error" for c in code_cells(nb) for out in c.outputs)
  assert "looprec is importable" in "".join(o.get("text", "") for o in code_cells(nb)[0].outputs)


def test_run_folders_on_a_filesystem_without_symlinks(tmp_path, monkeypatch):
  """paper_scale_tpu writes run folders to Google Drive in Colab, where os.symlink fails with errno 95: the run
  folder is still made, only the `latest` link is missing."""
  from looprec import runs  # pylint: disable=import-outside-toplevel

  def refuse(*_):
    raise OSError(95, "Operation not supported")

  monkeypatch.setattr(os, "symlink", refuse)
  run_dir = runs.make_run_dir(str(tmp_path), "depth_extrap", "paper", when=0)
  assert os.path.isdir(run_dir) and not os.path.lexists(tmp_path / "depth_extrap" / "latest")
  assert os.listdir(tmp_path / "depth_extrap") == [os.path.basename(run_dir)]


def test_on_eval_sees_every_training_evaluation(tmp_path):
  """The hook the systematicity notebook draws its live curves with: called once per evaluation, with what
  the run records as its curves, and removed on exit, also after an error."""
  # pylint: disable=import-outside-toplevel
  from looprec import (CompositionDataConfig, ModelConfig, Recurrence, TrainConfig, build_model, make_mesh, make_task,
                       on_eval)
  from looprec import train
  task = make_task(CompositionDataConfig(n_entities=24, n_relations=4, out_degree=3, phi=2.0, n_probe=32))
  model = build_model(ModelConfig(d_model=16, n_heads=2, n_layers=1, pos_emb="learned", max_positions=4,
                                  injection="none"), task.vocab.size)
  cfg = TrainConfig(steps=6, batch_size=8, warmup_steps=1, eval_every=2, checkpoint_every=100, log_every=1)
  seen = []
  with on_eval(lambda name, step, accuracy: seen.append((name, step, accuracy))):
    result = train.train_model("m", model, Recurrence.parse("fixed:1"), 6, cfg, task, make_mesh(), str(tmp_path), 0,
                               {})
  assert [(name, step) for name, step, _ in seen] == [("m", 2), ("m", 4), ("m", 6)]
  assert set(seen[0][2]) == set(task.probes)
  assert {split: [[step, acc[split]] for _, step, acc in seen] for split in task.probes} == result.curves
  with pytest.raises(RuntimeError), on_eval(seen.append):
    raise RuntimeError
  assert not train.current_hooks().listeners
