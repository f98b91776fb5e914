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


@pytest.fixture
def cli():
  return run_cli
