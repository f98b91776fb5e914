"""The device mesh: one `data` axis; batches sharded on it, params and optimizer state replicated."""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from looprec.config import ConfigError


def maybe_initialize_distributed():
  """jax.distributed.initialize() when a multi-host cluster is detected (SLURM, TPU pod, coordinator env)."""
  if jax.process_count() > 1 or os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return
  if os.environ.get("SLURM_NTASKS", "1") != "1" or os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
    jax.distributed.initialize()


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
