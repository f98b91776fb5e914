"""JAX's persistent compilation cache for runs: a repeated or resumed run loads its compiled steps from disk.

The folder is $LOOPREC_CACHE, or ~/.cache/looprec/jax when unset; LOOPREC_CACHE=off disables the cache.
"""
from __future__ import annotations

import os


def folder() -> str | None:
  path = os.environ.get("LOOPREC_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "looprec", "jax"))
  return None if path == "off" else path


def enable() -> str | None:
  """Points JAX's persistent cache at folder(), for every program (the many small ones that eager model init
  compiles op by op too); returns the folder."""
  path = folder()
  if path is None:
    return None
  import jax  # pylint: disable=import-outside-toplevel  (the CLI imports jax only when it needs it)
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path
