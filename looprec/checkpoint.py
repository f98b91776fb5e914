"""Orbax checkpoints of a training run: train state, data-iterator state, and run metadata (JSON).

The metadata holds the curriculum stage, where the stage's data stream began, and the resolved config, so a
run resumes exactly. Restores go into `jax.eval_shape` targets with the live shardings.
"""
from __future__ import annotations

import copy
import os

import grain
import jax
import orbax.checkpoint as ocp


class Checkpointer:
  def __init__(self, directory: str, keep: int):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                         item_names=("state", "data", "meta"))

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator, meta: dict):
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=grain.checkpoint.CheckpointSave(data_iterator),
                              meta=ocp.args.JsonSave(copy.deepcopy(meta)))  # written asynchronously
    self.manager.save(step, args=args, force=True)

  def restore_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step: int, abstract_state, data_iterator):
    """Restores the train state (shaped and sharded like abstract_state) and the iterator, in place."""
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                              data=grain.checkpoint.CheckpointRestore(data_iterator))
    return self.manager.restore(step, args=args)["state"]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def abstract_like(state):
  """ShapeDtypeStructs (with shardings) of a live state, the restore target."""
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def restore_params(directory: str):
  """(params, meta) of the latest checkpoint under directory, for analysis; None when there is none."""
  if not os.path.isdir(directory):
    return None
  manager = ocp.CheckpointManager(os.path.abspath(directory), item_names=("state", "data", "meta"))
  step = manager.latest_step()
  if step is None:
    manager.close()
    return None
  args = ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())
  out = manager.restore(step, args=args)
  manager.close()
  return out["state"]["params"], out["meta"]


def save_params(directory: str, params, meta: dict, step: int = 0):
  """A checkpoint holding only params and meta (an imported model): what `restore_params` reads."""
  manager = ocp.CheckpointManager(os.path.abspath(directory), options=ocp.CheckpointManagerOptions(create=True),
                                  item_names=("state", "meta"))
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params}),
                                             meta=ocp.args.JsonSave(copy.deepcopy(meta))), force=True)
  manager.wait_until_finished()
  manager.close()
