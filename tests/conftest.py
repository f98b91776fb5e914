import contextlib
import importlib
import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, env=None, timeout=600, cwd=None):
  """Runs `python -m looprec ...` in a subprocess; returns the CompletedProcess."""
  full_env = {**os.environ, **(env or {})}
  return subprocess.run([sys.executable, "-m", "looprec", *args], capture_output=True, text=True,
                        timeout=timeout, env=full_env, cwd=cwd or ROOT)


def results_of(proc):
  """(path, parsed results.json) from the last stdout line `results: <path>` of an experiment run."""
  last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
  assert last.startswith("results: "), proc.stdout + proc.stderr
  path = last.removeprefix("results: ")
  with open(path) as f:
    return path, json.load(f)


@contextlib.contextmanager
def temporary_module(tmp_path, monkeypatch, name: str, source: str, registry: dict, key: str):
  """Module `name` written from source into tmp_path and imported (registering `key` in registry, as a task or a
  kind registers itself); unregistered and forgotten after."""
  (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
  monkeypatch.syspath_prepend(str(tmp_path))
  try:
    yield importlib.import_module(name)
  finally:
    registry.pop(key, None)
    sys.modules.pop(name, None)


@pytest.fixture
def cli():
  return run_cli


OFFICIAL_SECTION = "## The official recipe, value by value"


def official_table(column: str) -> dict:
  """key -> value (a Python literal; None for `—`) of one preset's column of the official-values table in
  docs/reproducing.md, parsed from the doc itself."""
  import ast  # pylint: disable=import-outside-toplevel
  with open(os.path.join(ROOT, "docs", "reproducing.md")) as f:
    text = f.read()
  assert OFFICIAL_SECTION in text, "docs/reproducing.md lost its official-values table"
  lines = text.split(OFFICIAL_SECTION, 1)[1].splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith("|"))
  end = next(i for i in range(start, len(lines) + 1) if i == len(lines) or not lines[i].startswith("|"))
  rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines[start:end]]
  header, body = rows[0], rows[2:]
  col = header.index(column)
  return {r[0].strip("`"): None if r[col] == "—" else ast.literal_eval(r[col]) for r in body}


def config_value(cfg, key: str):
  """The value at a dotted key of a config tree (dataclasses and dicts)."""
  node = cfg
  for part in key.split("."):
    node = node[part] if isinstance(node, dict) else getattr(node, part)
  return node


def check_against_official(cfg, module, column: str):
  """Every cell of the column equals the preset's value; the preset trains exactly the models the table lists;
  the preset's source claims no exact or deviation-free recipe."""
  import inspect  # pylint: disable=import-outside-toplevel
  table = official_table(column)
  assert len(table) >= 40
  for key, value in table.items():
    if value is not None:
      assert config_value(cfg, key) == value, f"{key}: preset {config_value(cfg, key)!r}, official {value!r}"
  assert set(cfg.models) >= {k.split(".")[1] for k, v in table.items() if k.startswith("models.") and v is not None}
  source = inspect.getsource(module.paper)
  assert "exactly" not in source and "None intended" not in source


THROUGHPUT_TAGS = ("train/examples_per_second", "train/tokens_per_second", "train/mfu")


def tb_points(tb_dir: str) -> dict:
  """tag -> steps as TensorBoard shows them (`runs.tb_scalars`)."""
  from looprec import runs  # pylint: disable=import-outside-toplevel
  return {tag: [step for step, _ in pts] for tag, pts in runs.tb_scalars(tb_dir).items()}
