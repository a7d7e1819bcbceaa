"""Scaling on a fixed fake-device mesh (8 CPU devices sharing this machine's cores):
  1. step time as the number of sources K grows (mesh source=K, data=8/K; batch per source fixed);
  2. the cost of one training step as local_steps N changes (8 sources): local step + (begin_round + outer
     step) / N, with the three measured interleaved, and a direct check timing whole rounds.

  python bench/scaling.py [--model tiny] [--repeats 7]

All programs run in one process, interleaved, so their ratios share the same conditions. With
fake devices on 2 cores, total work (and step time) grows ~K; the DEPT claim being checked is
that nothing else does (no cross-source traffic in the local step) and that the outer step's
cost spreads over N.
"""
from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
from dept_jax import config_lib, dept  # noqa: E402
from dept_jax.mesh import make_mesh  # noqa: E402
from step_speed import model_setup  # noqa: E402


def program(c, V, K):
  c = c.copy_and_resolve_references()
  c.data.num_sources = K
  shape = config_lib.validate(c, 8, K)
  mesh = make_mesh(shape, jax.devices()[:8])
  prog = dept.build(c, mesh, dept.Vocab((V,) * K))
  rng = np.random.default_rng(0)
  B = c.batch_size
  batch = dept.make_batch(rng.integers(0, V, (K, B, c.seq_len + 1)),
                          np.repeat(np.arange(K)[:, None], B, 1), [V] * K)
  batch = jax.device_put(batch, prog.batch_shardings)
  return prog, batch, shape


def runners(prog, batch, K):
  st = [prog.init(jax.random.key(0))]
  ids, w = np.arange(K, dtype=np.int32), np.ones((K,), np.float32)

  # Every call waits for its result: with 8 fake devices on 2 cores, letting the next program's
  # collectives queue behind the previous one's deadlocked XLA's in-process rendezvous.
  def local_one():
    st[0], m = prog.local_step(st[0], batch)
    jax.block_until_ready(st[0])

  def outer_one():
    st[0] = jax.block_until_ready(prog.begin_round(st[0], ids))
    st[0], m = prog.outer_step(st[0], ids, w)
    jax.block_until_ready(st[0])

  def local(n):
    for _ in range(n):
      local_one()

  def outer(n):
    for _ in range(n):
      outer_one()

  def round_of(N):
    def run(n):
      for _ in range(n):
        for _ in range(N):
          local_one()
        outer_one()
    return run
  return local, outer, round_of


def interleave(cands, steps, repeats):
  for run in cands.values():
    run(1)
  times = {k: [] for k in cands}
  for _ in range(repeats):
    for k, run in cands.items():
      t = time.perf_counter()
      run(steps)
      times[k].append((time.perf_counter() - t) / steps)
  return {k: statistics.median(v) for k, v in times.items()}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--model", default="tiny")
  ap.add_argument("--repeats", type=int, default=7)
  ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/scaling.json"))
  args = ap.parse_args()
  c, V, _ = model_setup(args.model)
  c.model.dtype = "float32"
  tokens = c.batch_size * c.seq_len

  # 1. sources on the fixed 8-device mesh
  cands, shapes = {}, {}
  for K in (1, 2, 4, 8):
    prog, batch, shapes[K] = program(c, V, K)
    cands[K] = runners(prog, batch, K)[0]
  sec = interleave(cands, 5, args.repeats)
  by_sources = [{"sources": K, "mesh": shapes[K], "step_s": sec[K],
                 "step_s_per_source": sec[K] / K, "tokens_per_s": K * tokens / sec[K],
                 "step_vs_1_source": sec[K] / sec[1]} for K in cands]
  print(json.dumps(by_sources), flush=True)

  # 2. local_steps N with K=8 sources (one device each: the outer step is all cross-source)
  K = 8
  prog, batch, _ = program(c, V, K)
  local, outer, round_of = runners(prog, batch, K)
  direct_N = (1, 5, 25)
  cands = {"local": local, "begin+outer": outer, **{f"round_N{N}": round_of(N) for N in direct_N}}
  sec = interleave(cands, 2, args.repeats)
  t_local, t_outer = sec["local"], sec["begin+outer"]
  by_n = []
  for N in (1, 5, 25, 100, 500):
    row = {"local_steps": N, "model_step_s": t_local + t_outer / N,
           "outer_share": (t_outer / N) / (t_local + t_outer / N)}
    if N in direct_N:
      row["measured_step_s"] = sec[f"round_N{N}"] / N
    by_n.append(row)
  print(json.dumps({"local_s": t_local, "begin_outer_s": t_outer, "rows": by_n}), flush=True)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"date": datetime.date.today().isoformat(), "command": "python " + " ".join(sys.argv),
               "model": args.model, "devices": 8, "cpus": os.cpu_count(),
               "load_avg_1min": os.getloadavg()[0], "by_sources": by_sources,
               "local_s": t_local, "begin_outer_s": t_outer, "by_local_steps": by_n}, f, indent=1)


if __name__ == "__main__":
  main()
