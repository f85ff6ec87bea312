"""Device mesh and shardings: the batch on the data axes, parameters replicated or FSDP.

The mesh has two axes, `('data', 'fsdp')`. The batch is split over both (every device gets a
distinct slice of examples), so BatchNorm statistics computed by `jnp.mean` over the batch are
global across devices with no explicit collective. Parameters and optimizer state are
replicated, or with `fsdp > 1` sharded along their largest axis that divides evenly
(ZeRO-3 style; XLA inserts the all-gathers).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ('data', 'fsdp')


def make_mesh(mesh_config: Any = None) -> Mesh:
  """Builds the `('data', 'fsdp')` mesh over all devices of all processes.

  Args:
    mesh_config: mapping with `data` and `fsdp` sizes; -1 (at most one of them) takes the
      remaining devices. Default: all devices on `data`.

  Raises:
    ValueError: the sizes do not multiply to the device count.
  """
  devices = jax.devices()
  sizes = {'data': -1, 'fsdp': 1}
  if mesh_config:
    sizes.update({k: int(v) for k, v in dict(mesh_config).items()})
  unknown = sorted(set(sizes) - set(BATCH_AXES))
  if unknown:
    raise ValueError(f'unknown mesh axes {unknown}; the mesh axes are {list(BATCH_AXES)}')
  known = [v for v in sizes.values() if v != -1]
  if list(sizes.values()).count(-1) > 1 or any(v < 1 for v in known):
    raise ValueError(f'mesh sizes must be positive with at most one -1, got {sizes}')
  fixed = int(np.prod(known))
  if len(devices) % fixed:
    raise ValueError(f'mesh {sizes} does not fit {len(devices)} devices')
  sizes = {k: (len(devices) // fixed if v == -1 else v) for k, v in sizes.items()}
  if sizes['data'] * sizes['fsdp'] != len(devices):
    raise ValueError(f'mesh {sizes} uses {sizes["data"] * sizes["fsdp"]} devices, but there '
                     f'are {len(devices)}; set mesh.data=-1 to use them all')
  grid = np.asarray(devices).reshape(sizes['data'], sizes['fsdp'])
  return Mesh(grid, BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over all mesh axes; other axes whole."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def state_shardings(mesh: Mesh, abstract_state: Any, *, fsdp_min_size: int = 2**14) -> Any:
  """Shardings for every leaf of the train state.

  Replicated when the mesh's `fsdp` axis has size 1. Otherwise a leaf with at least
  `fsdp_min_size` elements is split along its largest axis divisible by the fsdp size;
  smaller leaves (biases, norms, scalars) stay replicated.
  """
  fsdp = mesh.shape['fsdp']

  def choose(leaf):
    shape = getattr(leaf, 'shape', ())
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < fsdp_min_size:
      return replicated(mesh)
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
      if shape[axis] % fsdp == 0:
        spec = [None] * len(shape)
        spec[axis] = 'fsdp'
        return NamedSharding(mesh, P(*spec))
    return replicated(mesh)

  return jax.tree.map(choose, abstract_state)


def check_batch_size(global_batch_size: int, mesh: Mesh, name: str = 'batch_size') -> None:
  """A global batch must split evenly over devices and processes; `name` is its config field."""
  devices = mesh.devices.size
  if global_batch_size % devices:
    raise ValueError(f'{name} {global_batch_size} is not divisible by the {devices} '
                     f'devices; set --config.{name} to a multiple of {devices}')
  if global_batch_size % jax.process_count():
    raise ValueError(f'{name} {global_batch_size} is not divisible by the '
                     f'{jax.process_count()} processes')


def to_global(batch: dict, sharding: NamedSharding) -> dict:
  """This process's slice of a batch (numpy) -> global jax arrays sharded on the batch axis."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}
