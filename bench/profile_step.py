"""Where a compiled training step's time goes on this machine: the plain single-model step of a
model, traced with jax.profiler and read back with jax.profiler.ProfileData, op time summed by kind.

  python bench/profile_step.py [--models demo] [--steps 20] [--repeats 3]

XLA:CPU runs a step as a graph of thunks on its thread pool; each thunk is one traced event named
after its HLO op (`ynn_fusion.12`, `copy.3`, ...). Kinds: matmul (YNNPACK dot fusions and Eigen
dots), scan bookkeeping (the zero-filled residual stacks, their copies, the dynamic slices in and
out of them and the while loops), layout copies (transposes feeding dots), and everything else
(elementwise and reduction fusions). Thunks may overlap on the pool's threads, so op time can
exceed the step's wall time. `matmul at peak` is the step's matmul FLOPs at the 2048^3 matmul
peak measured in the same run: the floor a perfect step would reach. Settings are profiled in turn,
`--repeats` times, and each keeps its fastest block (the machines here are shared).
"""
from __future__ import annotations

import argparse
import collections
import datetime
import glob
import json
import os
import re
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import step_speed as s  # noqa: E402  (sets the CPU platform first)

import jax  # noqa: E402

KINDS = (("matmul", r"(ynn_fusion|dot|dot_general)"),
         ("scan bookkeeping", r"(wrapped_broadcast|copy|while|.*dynamic-(update-)?slice.*)"),
         ("layout copies", r"(transpose|copy_bitcast|bitcast_copy|transpose_copy)(_fusion)?"),
         ("elementwise and reductions", r".*"))


def kind_of(op: str) -> str:
  """The kind of a thunk, from its HLO name without the `.N` suffix."""
  name = re.sub(r"\.\d+$", "", op)
  return next(kind for kind, pattern in KINDS if re.fullmatch(pattern, name))


def profile(run, steps: int) -> dict:
  """Op time per step by kind (ms) and the step's wall time, from one traced block of steps."""
  from jax.profiler import ProfileData
  run(3)
  trace_dir = tempfile.mkdtemp(prefix="dept_profile_")
  jax.profiler.start_trace(trace_dir)
  t = time.perf_counter()
  run(steps)
  wall = (time.perf_counter() - t) / steps
  jax.profiler.stop_trace()
  path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1]
  by_kind, top = collections.Counter(), collections.Counter()
  for plane in ProfileData.from_file(path).planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLAEigen"):  # the pool's threads, where thunks run
        continue
      for ev in line.events:
        if ev.name.startswith(("ThunkExecutor", "SlinkyThreadPool", "end:")):
          continue
        ms = ev.duration_ns / 1e6 / steps
        by_kind[kind_of(ev.name)] += ms
        top[re.sub(r"\.\d+$", "", ev.name)] += ms
  shutil.rmtree(trace_dir, ignore_errors=True)
  return {"wall_ms": wall * 1e3, "op_ms_by_kind": dict(by_kind),
          "op_ms_total": sum(by_kind.values()), "top_ops_ms": dict(top.most_common(8))}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--models", default="demo")
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/profile_step.json"))
  args = ap.parse_args()
  rows = []
  for name in args.models.split(","):
    c, V, _ = s.model_setup(name)
    c.model.dtype = "float32"
    peak = s.matmul_peak()
    matmul_flops = s.flops_per_token(c.model, V, c.seq_len) * c.batch_size * c.seq_len
    runs = {label: s.jax_plain(cfg, V, c.batch_size) for label, cfg in (
        ("defaults (scan, remat dots_no_batch)", c), ("remat none", s.variant(c, remat="none")),
        ("unrolled layers", s.unrolled(c)))}
    best = {}
    for _ in range(args.repeats):  # A B C A B C ...: keep each setting's least disturbed block
      for label, run in runs.items():
        r = profile(run, args.steps)
        if label not in best or r["wall_ms"] < best[label]["wall_ms"]:
          best[label] = r
    for label, r in best.items():
      r.update(model=name, setting=label, peak_gflops=peak / 1e9,
               matmul_at_peak_ms=matmul_flops / peak * 1e3)
      print(json.dumps(r), flush=True)
      rows.append(r)
  with open(args.out, "w") as f:
    json.dump({"date": datetime.date.today().isoformat(), "jax": jax.__version__,
               "command": "python " + " ".join(sys.argv), "load_avg_1min": os.getloadavg()[0],
               "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
