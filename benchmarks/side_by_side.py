"""Time this checkout beside another commit in one run: REF is checked out into a temporary git worktree, and a
benchmark's `--once` round (one JSON line on stdout) runs in a subprocess with each tree first on sys.path,
rounds alternating between the trees in alternating order (neither always runs first; the machine's drift falls
on both). Used by `--against REF` of benchmarks/chain_batches.py and benchmarks/decode.py."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = "this checkout"


@contextlib.contextmanager
def trees(against: str | None):
  """{name: path}: this checkout, and REF's worktree while the context is open."""
  found = {HERE: ROOT}
  if against is None:
    yield found
    return
  with tempfile.TemporaryDirectory() as tmp:
    other = os.path.join(tmp, "against")
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", "-q", other, against], check=True)
    try:
      yield {**found, against: other}
    finally:
      subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", other], check=True)


def measure(against: str | None, script: str, args: list, n: int) -> dict:
  """{tree: [each round's JSON]} for this checkout and REF (in that order), the load average printed before and
  after."""
  with trees(against) as found:
    print(f"load average {os.getloadavg()[0]:.1f}", flush=True)
    out = rounds(found, script, args, n)
  print(f"load average {os.getloadavg()[0]:.1f}")
  return out


def save(path: str | None, args, runs: dict):
  """Every round's figures and the arguments as JSON, where a path is given."""
  if path:
    with open(path, "w", encoding="utf-8") as f:
      json.dump({"args": vars(args), "rounds": runs}, f, indent=1)


def rounds(found: dict, script: str, args: list, n: int) -> dict:
  """{tree: [each round's JSON]}: `python benchmarks/<script> --once ARGS` with the tree's code, n rounds."""
  out = {name: [] for name in found}
  for i in range(n):
    for name, path in list(found.items())[::1 if i % 2 == 0 else -1]:
      run = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), "--once", *args], cwd=path,
                           env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True, check=True)
      out[name].append(json.loads(run.stdout.splitlines()[-1]))
  return out
