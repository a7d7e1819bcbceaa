"""Read collectives out of compiled HLO text (which cross `source` slices, and how many bytes) and
out of traced jaxprs (which collectives the code itself names).

This is how the tests prove a local step never talks across sources and how the trainer reports
`comm/outer_bytes`: from what XLA will actually run, not from a formula.
"""
from __future__ import annotations

import re

import numpy as np

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
                "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<shape>.+?)\s+"
                    r"(?P<op>" + "|".join(_COLLECTIVES) + r")(?P<start>-start)?\(")
_SHAPE = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\]")


def _shape_bytes(text: str) -> list[int]:
  out = []
  for dtype, dims in _SHAPE.findall(text):
    n = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
    out.append(n * _DTYPE_BYTES[dtype])
  return out


def _groups(line: str, n_devices: int) -> list[list[int]]:
  """Replica groups in any of XLA's three spellings; none given means all devices."""
  m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)
  if m:  # mesh['axis_0'=4,'axis_1'=2] {'axis_0'}: devices varying along the named axes
    axes = re.findall(r"'(\w+)'=(\d+)", m.group(1))
    names, sizes = [a for a, _ in axes], [int(s) for _, s in axes]
    reduced = re.findall(r"'(\w+)'", m.group(2))
    ids = np.arange(int(np.prod(sizes))).reshape(sizes)
    keep = [i for i, a in enumerate(names) if a not in reduced]
    moved = [i for i, a in enumerate(names) if a in reduced]
    ids = ids.transpose(keep + moved).reshape(-1, int(np.prod([sizes[i] for i in moved] or [1])))
    return ids.tolist()
  m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", line)
  if m:  # iota: [G,N]<=[dims]T(perm)
    dims = [int(d) for d in m.group(3).split(",")]
    ids = np.arange(int(np.prod(dims))).reshape(dims)
    if m.group(4):
      ids = ids.transpose([int(p) for p in m.group(4).split(",")])
    return ids.reshape(int(m.group(1)), int(m.group(2))).tolist()
  m = re.search(r"replica_groups=\{((?:\{[\d,]*\},?)*)\}", line)
  if m and m.group(1):
    return [[int(x) for x in g.split(",") if x] for g in re.findall(r"\{([\d,]*)\}", m.group(1))]
  m = re.search(r"source_target_pairs=\{((?:\{\d+,\d+\},?)*)\}", line)
  if m:
    return [[int(a), int(b)] for a, b in re.findall(r"\{(\d+),(\d+)\}", m.group(1))]
  return [list(range(n_devices))]


def collectives(hlo_text: str, n_devices: int, per_source: int) -> list[dict]:
  """Every collective: op, payload bytes per device, groups, and whether a group spans sources.

  Logical device ids follow the mesh's flattened order, and `source` is the mesh's first axis,
  so id // per_source is the source slice.
  """
  found = []
  for line in hlo_text.splitlines():
    m = _INSTR.match(line)
    if not m:
      continue
    sizes = _shape_bytes(m.group("shape"))
    if m.group("start") and m.group("op") == "all-gather" and len(sizes) >= 2:
      sizes = sizes[len(sizes) // 2:]  # (operands, results): count the gathered results
    groups = _groups(line, n_devices)
    payload = sum(sizes)
    if m.group("op") == "reduce-scatter":
      payload *= max(len(g) for g in groups)
    crosses = any(len({d // per_source for d in g}) > 1 for g in groups)
    found.append({"op": m.group("op"), "bytes": payload, "groups": groups,
                  "crosses_source": crosses})
  return found


def cross_source_bytes(hlo_text: str, mesh) -> int:
  n = mesh.devices.size
  per_source = n // mesh.shape["source"]
  return sum(c["bytes"] for c in collectives(hlo_text, n, per_source) if c["crosses_source"])


# Primitives that name a mesh axis without moving data: a type cast to "varies along the axis",
# and the slice's own index.
_NOT_COMMUNICATION = ("pvary", "axis_index")


def jaxpr_collectives(closed_jaxpr, axis: str) -> list[str]:
  """Names of the communicating primitives over mesh axis `axis` in a traced program (shard_map
  bodies, scans and nested jits included): what the code asked for, before XLA compiles it."""
  from jax.extend.core import jaxprs_in_params

  def names_axis(params) -> bool:
    for key in ("axes", "axis_name"):
      value = params.get(key)
      value = value if isinstance(value, (tuple, list)) else (value,)
      if axis in value:
        return True
    return False

  found = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name not in _NOT_COMMUNICATION and names_axis(eqn.params):
        found.append(eqn.primitive.name)
      for sub in jaxprs_in_params(eqn.params):
        walk(sub)
  walk(closed_jaxpr.jaxpr)
  return found
