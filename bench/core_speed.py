"""The core's speed claims, measured side by side in one process (issue 11):

  python bench/core_speed.py [--model demo] [--steps 3] [--repeats 9] [--train_steps 100]

1. Steps, interleaved (A B C ... repeated `--repeats` times, `--steps` steps a block, median
   block): the plain single-model JAX step, the DEPT local step for one source, the DEPT local step
   with every source of the model's config sharing the one device, torch eager on the same model,
   and the f32 2048^3 matmul whose rate is the peak for MFU (FLOPs per token as in
   bench/step_speed.py).
2. The trainer on the demo config (`train.train`, real data, eval and checkpoints as configured,
   logging every 10 steps), run in the same process between two blocks of the bench step (the
   DEPT K-source step of part 1, on the same program shapes). Reported: the trainer's logged
   tokens/s over the intervals without an outer step (pure training), and its end-to-end tokens/s
   from the first log to the last (outer steps, evals and checkpoints included; the first interval
   holds the compile and is left out), each against the bench step's tokens/s.

Writes bench/results/core_speed.json; bench/write_results.py renders it into RESULTS.md.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench/step_speed.py

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
import step_speed as s  # noqa: E402

from dept_jax import metrics_io, train  # noqa: E402


def steps_part(name, steps, repeats):
  c, V, K = s.model_setup(name)
  c.model.dtype = "float32" if c.model.dtype == "auto" else c.model.dtype
  B, L = c.batch_size, c.seq_len
  cands = {"plain": s.jax_plain(c, V, B), "dept_1src": s.jax_dept(c, V, B, 1),
           f"dept_{K}src": s.jax_dept(c, V, B, K), "torch_eager": s.torch_eager(c, V, B),
           "matmul_2048": s.matmul_run()}
  load = os.getloadavg()[0]
  sec = s.interleave(cands, steps, repeats)
  peak = 2 * 2048 ** 3 / sec.pop("matmul_2048")
  cands.pop("matmul_2048")
  fpt = s.flops_per_token(c.model, V, L)
  tps = {k: B * L * (K if k == f"dept_{K}src" else 1) / sec[k] for k in cands}
  mfu = {k: fpt * v / peak for k, v in tps.items()}
  return {"model": name, "sources": K, "d_model": c.model.d_model, "n_layers": c.model.n_layers,
          "vocab_rows": V, "batch": B, "seq_len": L, "flops_per_token": fpt,
          "peak_gflops_in_run": peak / 1e9, "load_avg_1min": [load, os.getloadavg()[0]],
          "step_s": sec, "tokens_per_s": tps, "mfu": mfu,
          f"mfu_dept_{K}src_vs_plain": mfu[f"dept_{K}src"] / mfu["plain"],
          "mfu_dept_1src_vs_plain": mfu["dept_1src"] / mfu["plain"],
          "jax_plain_vs_torch": tps["plain"] / tps["torch_eager"],
          f"dept_{K}src_vs_torch": tps[f"dept_{K}src"] / tps["torch_eager"]}


def trainer_part(train_steps, block_steps):
  """The demo trainer between two blocks of the bench step on the same shapes."""
  c = s.load_config("demo")
  c.steps = train_steps
  c.log.update(every=10, progress=False, tensorboard=False)
  K, B, L = c.data.num_sources, c.batch_size, c.seq_len
  cb, V, _ = s.model_setup("demo")
  cb.model.dtype = "float32" if c.model.dtype == "auto" else c.model.dtype
  bench = s.jax_dept(cb, V, B, K)
  bench(2)  # compile

  def bench_block():
    t = time.perf_counter()
    bench(block_steps)
    return K * B * L * block_steps / (time.perf_counter() - t)

  before = bench_block()
  workdir = tempfile.mkdtemp(prefix="core_speed_")
  writes = []
  real_write = metrics_io.MetricsWriter.write

  def timed_write(self, step, metrics):
    writes.append((time.perf_counter(), step))
    return real_write(self, step, metrics)
  metrics_io.MetricsWriter.write = timed_write
  try:
    t0 = time.perf_counter()
    train.train(c, workdir)
    wall = time.perf_counter() - t0
  finally:
    metrics_io.MetricsWriter.write = real_write
  after = bench_block()
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  shutil.rmtree(workdir, ignore_errors=True)
  logged = {r["step"]: r["tokens_per_sec"] for r in rows if "tokens_per_sec" in r}
  N = c.local_steps
  # Intervals (step-10, step]: the first holds the compile; those ending in a round end hold an
  # outer step, an eval and a checkpoint.
  clean = [v for st, v in logged.items() if st > 10 and st % N != 0]
  first_t, first_step = writes[0]
  last_t, last_step = writes[-1]
  end_to_end = K * B * L * (last_step - first_step) / (last_t - first_t)
  bench_tps = (before + after) / 2
  trainer_tps = statistics.median(clean)
  return {"config": "demo", "train_steps": train_steps, "local_steps": N, "sources": K,
          "trainer_wall_s": wall, "bench_step_tokens_per_s": [before, after],
          "trainer_tokens_per_s_by_interval": logged,
          "trainer_tokens_per_s": trainer_tps, "trainer_end_to_end_tokens_per_s": end_to_end,
          "end_to_end_steps": [first_step, last_step],
          "trainer_vs_bench_step": trainer_tps / bench_tps,
          "end_to_end_vs_bench_step": end_to_end / bench_tps,
          "load_avg_1min": os.getloadavg()[0]}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--model", default="demo")
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--repeats", type=int, default=9)
  ap.add_argument("--train_steps", type=int, default=100)
  ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/core_speed.json"))
  args = ap.parse_args()
  out = {"date": datetime.date.today().isoformat(), "jax": jax.__version__,
         "cpus": os.cpu_count(), "command": "python " + " ".join(sys.argv)}
  out["steps"] = steps_part(args.model, args.steps, args.repeats)
  print(json.dumps(out["steps"]), flush=True)
  out["trainer"] = trainer_part(args.train_steps, 10)
  print(json.dumps(out["trainer"]), flush=True)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
