"""Collective bytes per execution of a compiled HLO module, counting loops.

hlo_comm.collectives reads each collective once; a collective inside a while body (the scan over
layers puts STD's per-layer gradient all-reduce there) runs known_trip_count times. This walks
the call graph from ENTRY and multiplies each collective by how often its computation runs.
"""
from __future__ import annotations

import collections
import re

from dept_jax import hlo_comm

_COMP = re.compile(r"^(?:ENTRY\s+)?%(?P<name>[\w.\-]+)\s")
_WHILE = re.compile(r"\bwhile\(.*?body=%(?P<body>[\w.\-]+)")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_CALLS = re.compile(r"\b(?:calls|to_apply|true_computation|false_computation|condition)=%([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")


def _parse(hlo_text: str):
  comps, entry, cur = collections.defaultdict(list), None, None
  for line in hlo_text.splitlines():
    if line and not line[0].isspace():
      m = _COMP.match(line)
      if m:
        cur = m.group("name")
        if line.startswith("ENTRY"):
          entry = cur
      continue
    if cur is not None:
      comps[cur].append(line)
  return comps, entry


def collectives_per_run(hlo_text: str, n_devices: int, per_source: int) -> list[dict]:
  """Like hlo_comm.collectives, each with 'runs' (executions per call of the module)."""
  comps, entry = _parse(hlo_text)
  runs = collections.Counter({entry: 1})
  order, seen = [entry], {entry}
  edges = collections.defaultdict(list)  # caller -> [(callee, multiplier)]
  for name, lines in comps.items():
    for line in lines:
      w = _WHILE.search(line)
      if w:
        t = _TRIP.search(line)
        edges[name].append((w.group("body"), int(t.group(1)) if t else 1))
      for callee in _CALLS.findall(line):
        edges[name].append((callee, 1))
      for b in _BRANCHES.findall(line):
        edges[name] += [(c.strip().lstrip("%"), 1) for c in b.split(",") if c.strip()]
  # Call graphs are DAGs: propagate in topological order from ENTRY.
  indeg = collections.Counter()
  stack, reach = [entry], {entry}
  while stack:
    c = stack.pop()
    for callee, _ in edges[c]:
      indeg[callee] += 1
      if callee not in reach:
        reach.add(callee)
        stack.append(callee)
  ready = [entry]
  while ready:
    c = ready.pop()
    for callee, mult in edges[c]:
      runs[callee] += runs[c] * mult
      indeg[callee] -= 1
      if indeg[callee] == 0:
        ready.append(callee)
  out = []
  for name, lines in comps.items():
    for line in lines:
      for coll in hlo_comm.collectives(line, n_devices, per_source):
        out.append(dict(coll, runs=runs[name], computation=name))
  return out


def bytes_per_run(hlo_text: str, n_devices: int, per_source: int, crossing_only: bool) -> int:
  return sum(c["bytes"] * c["runs"] for c in collectives_per_run(hlo_text, n_devices, per_source)
             if c["crosses_source"] or not crossing_only)
