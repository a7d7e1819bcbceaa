"""Bytes the compiled DEPT step copies when several sources share one device, per way of looping
over the slots, against as many plain single-model steps (compile only, nothing runs).

  python bench/slot_copies.py [--model demo]

For each candidate `_over_local_slots` the local step is compiled for one CPU device and every
`copy` instruction of the optimized HLO is summed: once for those outside loops, times the trip
count for those inside a while body (slot loop and layer scan). Writes
bench/results/slot_copies.json.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
import step_speed as s  # noqa: E402

from dept_jax import dept, model, optim  # noqa: E402
from dept_jax.mesh import make_mesh  # noqa: E402

_BYTES = {"f32": 4, "s32": 4, "u32": 4, "bf16": 2, "pred": 1}


def _shape_bytes(text: str) -> int:
  return sum(_BYTES[dt] * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
             for dt, dims in re.findall(r"\b(f32|s32|u32|bf16|pred)\[([\d,]*)\]", text))


def copied_bytes(hlo_text: str) -> int:
  """Bytes written by copy instructions per execution: each counted as often as the loops around
  it run (a copy in the layer scan inside the slot loop: n_layers x slots times)."""
  comps, current, entry = {}, None, None
  for line in hlo_text.splitlines():
    m = re.match(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->.*\{\s*$", line)
    if m:
      current = comps.setdefault(m.group(2), [])
      entry = m.group(2) if m.group(1) else entry
    elif current is not None:
      current.append(line)
  runs = {entry: 1}
  for _ in range(len(comps)):  # propagate run counts from callers to callees until stable
    for name, lines in comps.items():
      if name not in runs:
        continue
      for line in lines:
        n = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
        for key, callee in re.findall(r"\b(body|condition|calls|to_apply)=%?([\w.\-]+)", line):
          runs[callee] = runs[name] * (int(n.group(1)) if key == "body" and n else 1)
  total = 0
  for name, lines in comps.items():
    for line in lines:
      m = re.match(r"\s*(?:ROOT\s+)?%[\w.\-]+\s*=\s*(.+?)\s+copy\(", line)
      if m:
        total += _shape_bytes(m.group(1)) * runs.get(name, 1)
  return total


def _in_place(fn, lay, params_S, opt_S, *batch_S):
  """A scan whose carry is the stacked state, slot i updated in place."""
  at = lambda t, i: jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False), t)
  put = lambda t, v, i: jax.tree.map(lambda x, y: jax.lax.dynamic_update_index_in_dim(x, y, i, 0),
                                     t, v)

  def body(carry, i):
    p, o, m = fn(at(carry[0], i), at(carry[1], i), *at(batch_S, i))
    return (put(carry[0], p, i), put(carry[1], o, i)), m
  (params_S, opt_S), metrics = jax.lax.scan(body, (params_S, opt_S), jnp.arange(lay.per_slice))
  return params_S, opt_S, metrics


def _unrolled(fn, lay, *args):
  """The slots one after another in Python, outputs stacked at the end."""
  outs = [fn(*jax.tree.map(lambda x: x[i], args)) for i in range(lay.per_slice)]
  return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--model", default="demo")
  ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/slot_copies.json"))
  args = ap.parse_args()
  c, V, K = s.model_setup(args.model)
  c.model.dtype = "float32"
  c.data.num_sources = K
  B, L = c.batch_size, c.seq_len
  mesh = make_mesh({"source": 1, "data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  batch = dept.make_batch(np.zeros((K, B, L + 1), np.int32), np.zeros((K, B), np.int32), [V] * K)
  rows = {}
  default = dept._over_local_slots
  for name, loop in (("lax.map (the default)", default), ("scan, stack updated in place", _in_place),
                     ("unrolled in Python", _unrolled)):
    dept._over_local_slots = loop
    try:
      prog = dept.build(c, mesh, dept.Vocab((V,) * K))
      hlo = prog.local_step.lower(prog.abstract_state, batch).compile().as_text()
    finally:
      dept._over_local_slots = default
    rows[f"{K} sources, {name}"] = copied_bytes(hlo)
  tx = optim.inner_transform(c.optim)
  params = {"body": model.init_body(c.model, jax.random.key(0)),
            "embed": model.init_embed(c.model, V, jax.random.key(1))}

  def plain(params, opt, tokens):
    (_, _), g = jax.value_and_grad(model.loss_fn, has_aux=True)(
        params, {"inputs": tokens, "targets": tokens}, V, c.model)
    u, opt = tx.update(g, opt, params)
    return jax.tree.map(lambda p, u: p - 1e-3 * u, params, u), opt
  hlo = jax.jit(plain, donate_argnums=(0, 1)).lower(params, tx.init(params),
                                                    jnp.zeros((B, L), jnp.int32)).compile().as_text()
  rows[f"{K} x the plain single-model step"] = K * copied_bytes(hlo)
  out = {"date": datetime.date.today().isoformat(), "command": "python " + " ".join(sys.argv),
         "model": args.model, "sources": K, "copied_bytes_per_step": rows}
  print(json.dumps(out, indent=1))
  with open(args.out, "w") as f:
    json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
