import json
import os
import subprocess
import sys

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


@pytest.fixture
def cli():
  return run_cli
