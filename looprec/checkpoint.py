"""Orbax checkpoints of a training run: train state, data-iterator state, and run metadata (JSON).

The metadata holds the curriculum stage, where the stage's data stream began, the resolved config and a
fingerprint of the data (vocabulary size, sequence length, a hash of the data config), so a run resumes
exactly and a checkpoint that does not fit the data is refused by name. Restores go into `jax.eval_shape`
targets with the live shardings; an unreadable newest step falls back to the next older one, saying so.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import sys

import grain
import jax
import orbax.checkpoint as ocp

from looprec import sharding
from looprec.config import ConfigError

ITEMS = ("state", "data", "meta")
# what orbax logs, as absl warnings, on every read-only restore of some of a checkpoint's items: expected, not news
EXPECTED_LOGS = ("CheckpointManagerOptions.read_only=True", "Given directory is read only",
                 "was found in the checkpoint, but could not be restored")


class _DropExpected(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return not any(text in record.getMessage() for text in EXPECTED_LOGS)


@contextlib.contextmanager
def _expected_logs_dropped():
  """While active, the absl logger drops EXPECTED_LOGS (other warnings pass)."""
  log, drop = logging.getLogger("absl"), _DropExpected()
  log.addFilter(drop)
  try:
    yield
  finally:
    log.removeFilter(drop)


def fingerprint(vocab_size: int, seq_len: int, data_config: dict) -> dict:
  """What a checkpoint must agree with to be resumed on this data: the vocabulary size, the padded sequence
  length, and the data config (a hash, and the config itself so that a difference can be named)."""
  digest = hashlib.sha256(json.dumps(data_config, sort_keys=True).encode()).hexdigest()[:16]
  return {"vocab_size": int(vocab_size), "seq_len": int(seq_len), "data_config_sha": digest,
          "data_config": data_config}


def task_fingerprint(task) -> dict:
  """fingerprint of a task (looprec.tasks): its vocabulary, the width of its training batches, its config."""
  from looprec import config  # pylint: disable=import-outside-toplevel
  return fingerprint(task.vocab.size, task.train_width, config.to_dict(task.cfg))


def _first_difference(saved: dict, current: dict, prefix: str = "data."):
  """(key, saved value, current value) of the first key both configs hold with different values, or None (keys
  only one side has are a newer version's defaults, not a difference in the data)."""
  for key in saved.keys() & current.keys():
    a, b = saved[key], current[key]
    if isinstance(a, dict) and isinstance(b, dict):
      found = _first_difference(a, b, f"{prefix}{key}.")
      if found:
        return found
    elif a != b:
      return f"{prefix}{key}", a, b
  return None


def check_fingerprint(saved: dict | None, current: dict | None, where: str):
  """ConfigError naming what differs between a checkpoint's data fingerprint and the current one (nothing to
  check when either is missing: a checkpoint written before fingerprints, or a caller without data)."""
  if not saved or not current:
    return
  for key in ("vocab_size", "seq_len"):
    if key in saved and saved[key] != current[key]:
      raise ConfigError(f"{where} was trained on data with {key}={saved[key]}, the data now has {key}={current[key]}")
  if saved.get("data_config_sha") not in (None, current["data_config_sha"]):
    found = _first_difference(saved.get("data_config", {}), current["data_config"])
    if found:
      raise ConfigError(f"{where} was trained on data with {found[0]}={found[1]!r}, the data now has {found[2]!r}")


def _warn(message: str):
  if jax.process_index() == 0:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _reason(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:200] if text else ''}"


# tensorstore's status codes that say the stored bytes are wrong or missing (not that reading them failed now)
_DAMAGE_CODES = ("OUT_OF_RANGE", "NOT_FOUND", "DATA_LOSS", "INVALID_ARGUMENT", "FAILED_PRECONDITION")


def damaged(e: Exception) -> bool:
  """Whether an exception raised while reading a step says the step's files are damaged (truncated, emptied,
  missing: the same read fails again), as opposed to a failure of this attempt (I/O error, out of memory,
  permissions, a restore target that no longer fits), which falling back to an older step would hide."""
  if isinstance(e, (json.JSONDecodeError, FileNotFoundError)):
    return True
  return type(e) is ValueError and str(e).startswith(_DAMAGE_CODES)  # pylint: disable=unidiomatic-typecheck


def newest_readable(steps, read_meta, read_state, where: str, data_fingerprint: dict | None):
  """(step, meta, read_state(step, meta), [(damaged step, reason), ...]) for the newest step of `steps` (newest
  first) that reads, skipping damaged ones; None when there is no step. ConfigError (moving nothing) when every
  step is damaged, when a read fails for another reason, or when a step's data fingerprint differs."""
  failed = []
  for step in steps:
    try:
      meta = read_meta(step)
      check_fingerprint(meta.get("data_fingerprint"), data_fingerprint, f"checkpoint {where} step {step}")
      return step, meta, read_state(step, meta), failed
    except ConfigError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (classified: damage falls back, the rest stops)
      if not damaged(e):
        raise ConfigError(f"could not read checkpoint {where} step {step} ({_reason(e)}); it is kept as it is: "
                          "retry, or move it aside to use an older step") from e
      failed.append((step, _reason(e)))
  if failed:
    raise ConfigError(f"no readable checkpoint in {where}: " + "; ".join(f"step {s}: {why}" for s, why in failed))
  return None


class Checkpointer:
  def __init__(self, directory: str, keep: int):
    # cleanup_tmp_directories: a save killed mid-write leaves an orbax temporary folder; it is removed here.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True)
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

  def steps(self) -> list[int]:
    """Every finished step on disk, newest first."""
    return sorted(self.manager.all_steps(), reverse=True)

  def save(self, step: int, state, data_iterator, meta: dict):
    """Saves asynchronously into a temporary folder that orbax renames when complete (a kill leaves no step)."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=grain.checkpoint.CheckpointSave(data_iterator),
                              meta=ocp.args.JsonSave(copy.deepcopy(meta)))
    self.manager.save(step, args=args, force=True)

  def restore_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step: int, abstract_state, data_iterator):
    """Restores the train state (shaped and sharded like abstract_state) and the iterator, in place."""
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                              data=grain.checkpoint.CheckpointRestore(data_iterator))
    return self.manager.restore(step, args=args)["state"]

  def restore_latest(self, abstract_state, make_iterator, data_fingerprint: dict | None = None):
    """(step, meta, state, iterator) of the newest readable step, or None when there is no step.

    make_iterator(meta) builds the data iterator the step's state is restored into. A damaged step (`damaged`)
    is named with the reason on stderr and the next older one is tried; it is moved aside (to
    <directory>.corrupt-<step>, or .corrupt-<step>.2, ... when that step was set aside before) so that training
    can write that step again. Any other failure to read, and a step whose data fingerprint differs from
    data_fingerprint, is a ConfigError that moves nothing."""
    def read_state(step, meta):
      iterator = make_iterator(meta)
      return self.restore(step, abstract_state, iterator), iterator

    found = newest_readable(self.steps(), self.restore_meta, read_state, self.directory, data_fingerprint)
    if found is None:
      return None
    step, meta, (state, iterator), failed = found
    self._set_aside(failed, step)
    return step, meta, state, iterator

  def _set_aside(self, failed, used: int):
    for step, why in failed:
      _warn(f"checkpoint {self.directory} step {step} is unreadable ({why}); using step {used}")
    if not failed:
      return
    self.wait()
    if jax.process_index() == 0:
      for step, _ in failed:
        os.replace(os.path.join(self.directory, str(step)), _free_name(f"{self.directory}.corrupt-{step}"))
    _sync("checkpoint-set-aside")
    self.manager.reload()

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def _free_name(path: str) -> str:
  """path, or path.2, path.3, ... : the first that does not exist."""
  n, found = 1, path
  while os.path.exists(found):
    n += 1
    found = f"{path}.{n}"
  return found


def _sync(name: str):
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def abstract_like(state):
  """ShapeDtypeStructs (with shardings) of a live state, the restore target."""
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def restore_params(directory: str, data_fingerprint: dict | None = None, mesh=None, step: int | None = None):
  """(params, meta) of the newest readable checkpoint under directory (or of `step`), for analysis; None when
  there is none.
  The state is read straight into its `sharding.state_shardings` layout on mesh (default: replicated over every
  device), whatever devices it was saved from. A damaged step is named on stderr and the next older one used (none
  left, or any other failure to read: ConfigError); nothing on disk is changed."""
  if not os.path.isdir(directory):
    return None
  with _expected_logs_dropped():
    return _restore_params(directory, data_fingerprint, mesh or sharding.make_mesh(), step)


def _restore_params(directory: str, data_fingerprint: dict | None, mesh, step: int | None):
  handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
  manager = ocp.CheckpointManager(os.path.abspath(directory), options=ocp.CheckpointManagerOptions(read_only=True),
                                  item_handlers=handlers)

  def read_state(step, meta):
    del meta
    target = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding.leaf_sharding(m.shape, mesh)),
        manager.item_metadata(step)["state"])
    return manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]

  read_meta = lambda step: manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  steps = sorted(manager.all_steps(), reverse=True)
  try:
    found = newest_readable(steps if step is None else [s for s in steps if s == step], read_meta, read_state,
                            directory, data_fingerprint)
  finally:
    manager.close()
  if found is None:
    return None
  step, meta, state, failed = found
  for bad, why in failed:
    _warn(f"checkpoint {directory} step {bad} is unreadable ({why}); using step {step}")
  return state["params"], meta


def save_params(directory: str, params, meta: dict, step: int = 0):
  """A checkpoint holding only params and meta (an imported model): what `restore_params` reads."""
  manager = ocp.CheckpointManager(os.path.abspath(directory), options=ocp.CheckpointManagerOptions(create=True),
                                  item_names=("state", "meta"))
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params}),
                                             meta=ocp.args.JsonSave(copy.deepcopy(meta))), force=True)
  manager.wait_until_finished()
  manager.close()


def stage_directory(run_dir: str, model: str) -> str:
  """Where a run keeps model's stage-pass checkpoints (train.stage_checkpoints): one per hop k, step k."""
  return os.path.join(run_dir, "stage_checkpoints", model)


def save_stage(run_dir: str, model: str, hop: int, params, meta: dict):
  """The checkpoint of model at the pass of curriculum stage `hop` (params and meta), kept for good; a resumed run
  that passes the stage again (at the same step, with the same params) finds it on disk."""
  directory = stage_directory(run_dir, model)
  if hop not in stage_hops(run_dir, model):
    save_params(directory, params, meta, step=hop)


def stage_hops(run_dir: str, model: str) -> list[int]:
  """The stages whose pass checkpoint model has, in order."""
  directory = stage_directory(run_dir, model)
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(directory) else []
