"""The one named mesh (source, data, fsdp, tensor) and the table mapping logical axes onto it."""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from dept_jax.config_lib import MESH_AXES, ConfigError

# Logical axis -> mesh axis. `source` stacks per-source state; batch rows spread over data+fsdp
# inside one source's slice; weights shard over fsdp (embed dim) and tensor (heads, mlp, vocab).
LOGICAL_RULES = {
    "source": "source",
    "batch": ("data", "fsdp"),
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "vocab": "tensor",
    "layers": None,
    "length": None,
    None: None,
}


def make_mesh(shape: dict, devices=None) -> Mesh:
  """Source slices are contiguous runs of devices: on a multi-slice pod (devices ordered slice by
  slice) each source then sits inside one slice and only the outer step crosses DCN."""
  devices = slice_major(devices if devices is not None else jax.devices())
  n_slices = len({getattr(d, "slice_index", 0) or 0 for d in devices})
  if n_slices > 1 and shape["source"] % n_slices:
    raise ConfigError(f"config.mesh.source: {shape['source']} source slices cannot be laid over "
                      f"{n_slices} TPU slices without a source spanning two of them (DCN inside "
                      f"a local step). Fix: set mesh.source to a multiple of {n_slices}.")
  arr = np.asarray(devices).reshape([shape[a] for a in MESH_AXES])
  return Mesh(arr, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def slice_major(devices) -> list:
  """Devices grouped slice by slice (stable within a slice); one slice (or CPU/GPU) keeps order."""
  return sorted(devices, key=lambda d: getattr(d, "slice_index", 0) or 0)


def logical_to_spec(axes) -> P:
  return P(*(LOGICAL_RULES[a] for a in axes))


def tree_shardings(mesh: Mesh, axes_tree, stacked: bool = False):
  """NamedShardings for a tree of logical-axes tuples; stacked=True adds the leading source axis."""
  def one(axes):
    axes = (("source",) if stacked else ()) + tuple(axes)
    return NamedSharding(mesh, logical_to_spec(axes))
  return jax.tree.map(one, axes_tree, is_leaf=lambda x: isinstance(x, tuple))


def fitted_shardings(mesh: Mesh, axes_tree, shapes_tree):
  """As tree_shardings (unstacked), but a dimension its mesh axes do not divide stays whole: for
  one model taken out of the state (e.g. a trimmed table whose rows are not padded) to be spread
  over every device instead of copied whole onto each."""
  def one(axes, x):
    spec = []
    for dim, a in zip(x.shape, axes):
      mesh_axes = LOGICAL_RULES[a]
      names = (mesh_axes,) if isinstance(mesh_axes, str) else (mesh_axes or ())
      size = int(np.prod([mesh.shape[n] for n in names])) if names else 1
      spec.append(mesh_axes if names and dim % size == 0 else None)
    return NamedSharding(mesh, P(*spec))
  return jax.tree.map(one, axes_tree, shapes_tree, is_leaf=lambda x: isinstance(x, tuple))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """[source, batch, length] token arrays."""
  return NamedSharding(mesh, P("source", ("data", "fsdp"), None))
