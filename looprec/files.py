"""What every command and writer shares, standard library only: an argument parser that fails with one error
line, and atomic file writes (a reader never sees half a file)."""
from __future__ import annotations

import argparse
import json
import os
import pathlib


class UsageError(ValueError):
  """A command line that OneLineParser rejected."""


class OneLineParser(argparse.ArgumentParser):
  """An ArgumentParser that raises UsageError instead of printing the usage and exiting, so a CLI reports bad
  arguments as one `error:` line like every other bad input."""

  def error(self, message):
    raise UsageError(message)


def write_text_atomic(path, text: str) -> None:
  """Writes to a hidden temp file in the same folder, flushed to disk, then renames it over `path`: a reader
  never sees half a file."""
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def write_json_atomic(path, data, indent=None) -> None:
  """JSON through write_text_atomic; indented files end with a newline."""
  write_text_atomic(path, json.dumps(data, indent=indent) + ("\n" if indent is not None else ""))
