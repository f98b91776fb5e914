"""Run folders: runs/<name>/<preset>-<YYYYmmdd-HHMMSS>/, a `latest` link, and atomic JSON writes."""
from __future__ import annotations

import json
import os
import time

from data_gen.io import write_json_atomic


def make_run_dir(root: str, name: str, preset: str, when: float | None = None, create: bool = True) -> str:
  """Creates (when `create`) and returns runs/<name>/<preset>-<time>; `when` (seconds since the epoch) lets
  several processes agree on the name, and only the one that creates it moves the `latest` link."""
  base = os.path.join(root, name)
  stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if when is None else when))
  run_dir = os.path.join(base, f"{preset}-{stamp}")
  if not create:
    return run_dir
  os.makedirs(base, exist_ok=True)
  i = 1
  while os.path.exists(run_dir):  # two runs in the same second
    run_dir, i = os.path.join(base, f"{preset}-{stamp}-{i}"), i + 1
  os.makedirs(run_dir)
  link, tmp = os.path.join(base, "latest"), os.path.join(base, f".latest-{os.getpid()}")
  os.symlink(os.path.basename(run_dir), tmp)
  os.replace(tmp, link)
  return run_dir


def write_json(path: str, obj) -> None:
  """Writes atomically (a temporary file renamed over path), indented."""
  write_json_atomic(path, obj, indent=2)


def read_json(path: str):
  with open(path) as f:
    return json.load(f)
