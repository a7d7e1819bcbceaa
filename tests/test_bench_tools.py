"""The benchmark's own instruments: loop-aware collective bytes and the documented FLOP formula."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import hlo_loops  # noqa: E402


def test_collective_inside_a_scan_counts_once_per_trip():
  mesh = Mesh(np.array(jax.devices()[:4]), ("d",))
  x = jax.device_put(jnp.ones((4, 16), jnp.float32), NamedSharding(mesh, P("d", None)))

  def f(x):
    def body(c, _):  # the sum over the sharded rows depends on the carry: an all-reduce per trip
      return c + jnp.sum(x * c, axis=0), None
    return jax.lax.scan(body, jnp.ones((16,), jnp.float32), None, length=3)[0]

  text = jax.jit(f, out_shardings=NamedSharding(mesh, P())).lower(x).compile().as_text()
  found = hlo_loops.collectives_per_run(text, 4, 1)
  in_loop = [c for c in found if c["runs"] == 3]
  assert in_loop and all(c["op"] == "all-reduce" for c in in_loop)
  assert sum(c["bytes"] for c in in_loop) == 16 * 4
  assert hlo_loops.bytes_per_run(text, 4, 1, crossing_only=False) == sum(
      c["bytes"] * c["runs"] for c in found)
  assert hlo_loops.bytes_per_run(text, 4, 1, crossing_only=False) >= 3 * 16 * 4


def test_flops_per_token_formula_for_tiny():
  import step_speed
  c, V, _ = step_speed.model_setup("tiny")
  D, H, F, layers, L = 64, 4, 172, 2, 64
  hd = D // H
  n_matmul = layers * (D * 3 * H * hd + H * hd * D + 3 * D * F)
  want = 6 * (n_matmul + V * D) + 12 * layers * L * D
  assert (c.model.d_model, c.model.n_heads, c.model.d_ff, c.model.n_layers, c.seq_len) == (
      D, H, F, layers, L)
  assert step_speed.flops_per_token(c.model, V, L) == want == 764928


def test_profile_kinds_of_thunk_names():
  import profile_step
  kinds = {name: profile_step.kind_of(name) for name in (
      "ynn_fusion.12", "dot.3", "dot_general.88", "wrapped_broadcast.5", "copy.160", "while.3",
      "bitcast_dynamic-update-slice_fusion.2", "dynamic-slice_bitcast_fusion", "copy_bitcast_fusion.8",
      "transpose_copy_fusion.1", "add_divide_fusion.2", "broadcast_select_fusion")}
  assert kinds == {
      "ynn_fusion.12": "matmul", "dot.3": "matmul", "dot_general.88": "matmul",
      "wrapped_broadcast.5": "scan bookkeeping", "copy.160": "scan bookkeeping",
      "while.3": "scan bookkeeping", "bitcast_dynamic-update-slice_fusion.2": "scan bookkeeping",
      "dynamic-slice_bitcast_fusion": "scan bookkeeping", "copy_bitcast_fusion.8": "layout copies",
      "transpose_copy_fusion.1": "layout copies", "add_divide_fusion.2": "elementwise and reductions",
      "broadcast_select_fusion": "elementwise and reductions"}
