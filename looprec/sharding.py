"""The device mesh: a `data` axis, and with train.fsdp = N > 1 an `fsdp` axis of N devices as well. Batches are
sharded over every device (both axes); params and optimizer state are replicated, or with an `fsdp` axis split
over it (`state_shardings`), the all-gathers and reduce-scatters left to XLA's partitioner."""
from __future__ import annotations

import math
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


def make_mesh(fsdp: int = 1) -> jax.sharding.Mesh:
  """`data` over every device, or (`data`, `fsdp`) with fsdp > 1 devices on the second axis (its devices the
  nearest ones where the topology has a notion of near); ConfigError when fsdp does not divide the device count."""
  n = jax.device_count()
  if fsdp < 1 or n % fsdp:
    raise ConfigError(f"train.fsdp={fsdp} does not divide the device count ({n})")
  auto = jax.sharding.AxisType.Auto
  if fsdp == 1:
    return jax.make_mesh((n,), ("data",), axis_types=(auto,))
  return jax.make_mesh((n // fsdp, fsdp), ("data", "fsdp"), axis_types=(auto, auto))


def loading_mesh(fsdp: int) -> jax.sharding.Mesh:
  """The mesh a saved run's params are loaded onto: its train.fsdp, or the largest divisor of it that divides
  this machine's device count (a run trained on more devices is analysed on fewer)."""
  return make_mesh(math.gcd(fsdp, jax.device_count()))


def check_batch(batch_size: int, mesh: jax.sharding.Mesh, what: str = "train.batch_size"):
  n = mesh.devices.size
  if batch_size % n:
    raise ConfigError(f"{what}={batch_size} does not divide over {n} devices")


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh, stacked: bool = False) -> NamedSharding:
  """Rows split over every device of the mesh (both axes when it has two); stacked: batches stacked on a leading
  axis, each one's rows split so."""
  return NamedSharding(mesh, P(None, mesh.axis_names) if stacked else P(mesh.axis_names))


def leaf_sharding(shape: tuple, mesh) -> NamedSharding:
  """The layout of a params or optimizer-state leaf of this shape. With an `fsdp` axis of size N, a leaf of rank
  >= 2 (a matrix, as weight decay counts them) is split over it along its largest dimension that N divides (the
  first such on a tie); vectors, scalars and leaves with no such dimension are replicated."""
  n = mesh.shape.get("fsdp", 1)
  dims = [i for i, size in enumerate(shape) if size % n == 0] if n > 1 and len(shape) >= 2 else []
  if not dims:
    return replicated(mesh)
  split = max(dims, key=lambda i: shape[i])
  return NamedSharding(mesh, P(*("fsdp" if i == split else None for i in range(len(shape)))))


def state_shardings(tree, mesh):
  """`leaf_sharding` of every leaf of a params or optimizer-state tree (arrays or ShapeDtypeStructs). An
  optimizer moment has its parameter's shape, so it gets its parameter's layout, whatever the optax chain."""
  return jax.tree_util.tree_map(lambda leaf: leaf_sharding(leaf.shape, mesh), tree)


def put_batch(batch: dict, mesh) -> dict:
  """Places this process's rows of a global batch on the mesh, sharded over every device."""
  sharding = data_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def put_batches(batches: list[dict], mesh) -> dict:
  """`put_batch` of several batches stacked on a leading axis (what `train.Programs.steps` runs)."""
  sharding = data_sharded(mesh, stacked=True)
  return {k: jax.make_array_from_process_local_data(sharding, np.stack([b[k] for b in batches]))
          for k in batches[0]}


def jit_over_batch(fn, mesh, n_batch_args: int):
  """jit of fn(params, *batch_arrays): params in whatever layout they have (replicated, or split by
  `state_shardings`), the batch arrays sharded over every device, outputs replicated (what every evaluation pass
  over padded batches uses)."""
  return jax.jit(fn, in_shardings=(None,) + (data_sharded(mesh),) * n_batch_args, out_shardings=replicated(mesh))
