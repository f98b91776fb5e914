"""The device mesh: one `data` axis; batches sharded on it, params and optimizer state replicated."""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from looprec.config import ConfigError


def maybe_initialize_distributed():
  """jax.distributed.initialize() when the environment describes a multi-process cluster (an explicit
  coordinator, SLURM with several tasks, a multi-host TPU slice). Decided from the environment alone: any jax
  call before initialize() would start the local backend and make initialize() fail. With an explicit
  JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID give the count and this process's index
  (jax reads only the address from the environment)."""
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS") and "JAX_PROCESS_ID" in env:
    jax.distributed.initialize(num_processes=int(env["JAX_NUM_PROCESSES"]), process_id=int(env["JAX_PROCESS_ID"]))
  elif (env.get("JAX_COORDINATOR_ADDRESS") or int(env.get("SLURM_NTASKS", "1")) > 1
        or "," in env.get("TPU_WORKER_HOSTNAMES", "")):
    jax.distributed.initialize()


def same_on_all_processes(value: int) -> int:
  """Process 0's value of an integer, on every process (the identity on one process)."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return int(multihost_utils.broadcast_one_to_all(np.int64(value)))


def agree_to_stop(signum: int, timed_out: bool) -> tuple[int, bool]:
  """(the largest signal number any process received (0: none), process 0's time-budget verdict): one
  all-gather, so every process stops at the same step whichever of them was signalled."""
  if jax.process_count() == 1:
    return signum, timed_out
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  flags = np.asarray(multihost_utils.process_allgather(np.array([signum, int(timed_out)], np.int32)))
  return int(flags[:, 0].max()), bool(flags[0, 1])


def make_mesh() -> jax.sharding.Mesh:
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def check_batch(batch_size: int, mesh: jax.sharding.Mesh, what: str = "train.batch_size"):
  n = mesh.devices.size
  if batch_size % n:
    raise ConfigError(f"{what}={batch_size} does not divide over {n} devices")


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def put_batch(batch: dict, mesh) -> dict:
  """Places this process's rows of a global batch on the mesh, sharded along `data`."""
  sharding = data_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def jit_over_batch(fn, mesh, n_batch_args: int):
  """jit of fn(params, *batch_arrays): params replicated, the batch arrays sharded on `data`, outputs
  replicated (what every evaluation pass over padded batches uses)."""
  return jax.jit(fn, in_shardings=(replicated(mesh),) + (data_sharded(mesh),) * n_batch_args,
                 out_shardings=replicated(mesh))
