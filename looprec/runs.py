"""Run folders: runs/<name>/<preset>-<YYYYmmdd-HHMMSS>[-i]/, a `latest` link, atomic file writes, and the stage
lines a run prints after training."""
from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import platform
import struct
import subprocess
import sys
import time

from looprec.files import write_json_atomic
from looprec.config import ConfigError


@contextlib.contextmanager
def stage(what: str):
  """One line on stderr around a phase after training, `what ... N s`, from process 0 only: no phase (evaluation,
  sweep, halting, lens, figures) runs in silence."""
  import jax  # pylint: disable=import-outside-toplevel  (jax is slow to import)
  show, start = jax.process_index() == 0, time.time()
  if show:
    print(f"{what} ...", end="", file=sys.stderr, flush=True)
  try:
    yield
  finally:
    if show:
      print(f" {time.time() - start:.0f} s", file=sys.stderr, flush=True)


CODE = ("looprec", "experiments", "data_gen")  # a change here outside a commit makes the commit "-dirty"


def code_commit() -> str | None:
  """The commit of this checkout's code, "-dirty" when CODE differs from it; None outside a git checkout."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    sha = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no", "--", *CODE],
                           capture_output=True, text=True, check=True)
  except (OSError, subprocess.CalledProcessError):
    return None
  return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def machine() -> dict:
  """What results depend on besides the code: the platform and the CPU count."""
  return {"platform": platform.platform(), "cpu_count": os.cpu_count()}


def run_dir_name(root: str, name: str, preset: str, when: float, index: int = 0) -> str:
  """runs/<name>/<preset>-<time>, with -<index> when an earlier run took that second."""
  stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
  return os.path.join(root, name, f"{preset}-{stamp}" + (f"-{index}" if index else ""))


def make_run_dir(root: str, name: str, preset: str, when: float | None = None) -> str:
  """Creates runs/<name>/<preset>-<time>[-i] and moves the `latest` link to it; returns the folder. `when`
  (seconds since the epoch) lets several processes agree on the time; they learn i (`index_of`) from the one
  that creates the folder. A runs folder that cannot be written (read-only, a file in its place) is a ConfigError, and
  nothing is left half-made."""
  when = time.time() if when is None else when
  base = os.path.join(root, name)
  try:
    os.makedirs(base, exist_ok=True)
    index = 0
    while True:  # two runs in the same second
      run_dir = run_dir_name(root, name, preset, when, index)
      try:
        os.mkdir(run_dir)
        break
      except FileExistsError:
        index += 1
    link, tmp = os.path.join(base, "latest"), os.path.join(base, f".latest-{os.getpid()}")
    try:
      os.symlink(os.path.basename(run_dir), tmp)
      os.replace(tmp, link)
    except OSError as e:
      if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
        raise
      # a filesystem without symlinks (Google Drive mounted in Colab): no `latest` link
  except OSError as e:
    raise ConfigError(f"cannot create a run folder under runs folder {root!r}: "
                      f"{e.strerror or e} ({e.filename})") from None
  return run_dir


def index_of(run_dir: str) -> int:
  """The -<i> suffix of a run folder's name (0 when it has none)."""
  last = os.path.basename(run_dir).rsplit("-", 1)[-1]
  return int(last) if len(last) < 6 and last.isdigit() else 0


@contextlib.contextmanager
def atomic_path(path: str):
  """Yields a temporary path beside `path` (same suffix, so writers that go by the extension work, such as
  matplotlib's savefig) and renames it to `path` when the block succeeds: a reader or a kill never leaves half
  a file (text and JSON: looprec.files.write_text_atomic)."""
  head, tail = os.path.split(path)
  stem, ext = os.path.splitext(tail)
  tmp = os.path.join(head, f".{stem}.tmp-{os.getpid()}{ext}")
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path: str, obj) -> None:
  """Writes atomically (a temporary file renamed over path), indented."""
  write_json_atomic(path, obj, indent=2)


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


def tb_scalars(tb_dir: str) -> dict:
  """tag -> [[step, value], ...] as TensorBoard shows a run's scalars: events read in order, a SessionLog START at
  step s (tensorboardX's purge_step, a resume) drops the points at steps >= s read before it; a record cut short by
  a kill ends the file."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  points = {}
  for path in sorted(glob.glob(os.path.join(glob.escape(tb_dir), "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      blob = f.read()
    at = 0
    while at + 12 <= len(blob):
      (n,) = struct.unpack("<Q", blob[at:at + 8])
      if at + 12 + n + 4 > len(blob):
        break
      ev = event_pb2.Event.FromString(blob[at + 12:at + 12 + n])
      at += 12 + n + 4
      if ev.HasField("session_log") and ev.session_log.status == event_pb2.SessionLog.START:
        points = {t: [p for p in pts if p[0] < ev.step] for t, pts in points.items()}
      for v in ev.summary.value:
        points.setdefault(v.tag, []).append([ev.step, v.simple_value])
  return points
