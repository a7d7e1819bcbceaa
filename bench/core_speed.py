"""The core's speed claims, measured side by side in one process (issue 11):

  python bench/core_speed.py [--model demo] [--steps 3] [--repeats 9] [--train_steps 100]

1. Steps, interleaved (A B C ... repeated `--repeats` times, `--steps` steps a block): the plain
   single-model JAX step, the DEPT local step for one source, the DEPT local step with every source
   of the model's config sharing the one device, the plain step run on as many separate models in
   turn (what K models cost this machine in memory traffic, with no DEPT code), torch eager on the
   same model, and the f32 2048^3 matmul whose rate is the peak for MFU (FLOPs per token as in
   bench/step_speed.py). Reported per candidate: the median block and the best block (on a shared
   machine the best block is the least disturbed one); ratios from both.
2. The trainer on the demo config (`train.train`, real data, eval and checkpoints as configured,
   logging every 10 steps) with a block of the bench step (the DEPT K-source step of part 1, same
   shapes) run at every log, while no step is in flight, so each 10-step trainer interval sits
   between two bench blocks under the same load. Reported: the trainer's logged tokens/s over the
   intervals without an outer step (pure training) and end to end from the first log to the last
   (outer steps, evals and checkpoints included; the bench blocks' own time taken out; the first
   interval holds the compile and is left out), each against the bench blocks.

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
  plains = [s.jax_plain(c, V, B) for _ in range(K)]

  def plain_models(n):  # the plain step on K separate models in turn: K models' memory traffic
    for _ in range(n):
      for run in plains:
        run(1)
  cands = {"plain": s.jax_plain(c, V, B), "dept_1src": s.jax_dept(c, V, B, 1),
           f"dept_{K}src": s.jax_dept(c, V, B, K), f"plain_{K}_models": plain_models,
           "torch_eager": s.torch_eager(c, V, B), "matmul_2048": s.matmul_run()}
  load = os.getloadavg()[0]
  times = s.interleave(cands, steps, repeats, pick=None)
  fpt = s.flops_per_token(c.model, V, L)
  out = {"model": name, "sources": K, "d_model": c.model.d_model, "n_layers": c.model.n_layers,
         "vocab_rows": V, "batch": B, "seq_len": L, "flops_per_token": fpt, "repeats": repeats,
         "steps_per_block": steps, "load_avg_1min": [load, os.getloadavg()[0]]}
  for stat, pick in (("median", statistics.median), ("best", min)):
    sec = {k: pick(v) for k, v in times.items()}
    peak = 2 * 2048 ** 3 / sec.pop("matmul_2048")
    tps = {k: B * L * (K if k in (f"dept_{K}src", f"plain_{K}_models") else 1) / sec[k]
           for k in sec}
    mfu = {k: fpt * v / peak for k, v in tps.items()}
    out[stat] = {"peak_gflops": peak / 1e9, "step_s": sec, "tokens_per_s": tps, "mfu": mfu,
                 f"mfu_dept_{K}src_vs_plain": mfu[f"dept_{K}src"] / mfu["plain"],
                 f"mfu_dept_{K}src_vs_plain_{K}_models":
                     mfu[f"dept_{K}src"] / mfu[f"plain_{K}_models"],
                 "mfu_dept_1src_vs_plain": mfu["dept_1src"] / mfu["plain"],
                 "jax_plain_vs_torch": tps["plain"] / tps["torch_eager"],
                 f"dept_{K}src_vs_torch": tps[f"dept_{K}src"] / tps["torch_eager"]}
  return out


class _Timers(metrics_io.StepTimer):
  """The trainer's StepTimer, kept so that a bench block's time can be taken out of it."""
  made = []

  def __init__(self):
    super().__init__()
    _Timers.made.append(self)


def trainer_part(train_steps, block_steps):
  """The demo trainer with a block of the bench step at every log (same shapes, same process)."""
  c = s.load_config("demo")
  c.steps = train_steps
  c.log.update(every=10, progress=False, tensorboard=False)
  K, B, L = c.data.num_sources, c.batch_size, c.seq_len
  cb, V, _ = s.model_setup("demo")
  cb.model.dtype = "float32" if c.model.dtype == "auto" else c.model.dtype
  bench = s.jax_dept(cb, V, B, K)
  bench(2)  # compile
  tokens_per_step = K * B * L
  blocks, writes = [], []  # bench tokens/s at each log; (time, step, bench seconds so far)
  real_write, real_timer = metrics_io.MetricsWriter.write, metrics_io.StepTimer

  def write_then_bench(self, step, metrics):
    real_write(self, step, metrics)
    t = time.perf_counter()
    bench(block_steps)
    took = time.perf_counter() - t
    blocks.append(tokens_per_step * block_steps / took)
    _Timers.made[-1].t0 += took  # the next trainer interval does not see the block
    writes.append((time.perf_counter(), step, took + (writes[-1][2] if writes else 0.0)))
  workdir = tempfile.mkdtemp(prefix="core_speed_")
  metrics_io.MetricsWriter.write, metrics_io.StepTimer = write_then_bench, _Timers
  try:
    t0 = time.perf_counter()
    train.train(c, workdir)
    wall = time.perf_counter() - t0
  finally:
    metrics_io.MetricsWriter.write, metrics_io.StepTimer = real_write, real_timer
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  shutil.rmtree(workdir, ignore_errors=True)
  logged = [(r["step"], r["tokens_per_sec"]) for r in rows if "tokens_per_sec" in r]
  N = c.local_steps
  # Interval i ends at logged[i] and sits between bench blocks i-1 and i. The first holds the
  # compile; those ending at a round end hold an outer step, an eval and a checkpoint.
  pairs = [(v, (blocks[i - 1] + blocks[i]) / 2) for i, (st, v) in enumerate(logged)
           if i > 0 and st % N != 0]
  (t_first, s_first, b_first), (t_last, s_last, b_last) = writes[0], writes[-1]
  end_to_end = tokens_per_step * (s_last - s_first) / (t_last - t_first - (b_last - b_first))
  bench_tps = statistics.median(blocks[1:])
  return {"config": "demo", "train_steps": train_steps, "local_steps": N, "sources": K,
          "trainer_wall_s": wall, "bench_block_tokens_per_s": blocks,
          "trainer_tokens_per_s_by_interval": dict(logged),
          "trainer_tokens_per_s": statistics.median(v for v, _ in pairs),
          "bench_step_tokens_per_s": bench_tps,
          "trainer_vs_bench_step": statistics.median(v / b for v, b in pairs),
          "trainer_end_to_end_tokens_per_s": end_to_end, "end_to_end_steps": [s_first, s_last],
          "end_to_end_vs_bench_step": end_to_end / bench_tps,
          "load_avg_1min": os.getloadavg()[0]}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--model", default="demo")
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--repeats", type=int, default=9)
  ap.add_argument("--train_steps", type=int, default=100)
  ap.add_argument("--block_steps", type=int, default=5, help="bench steps at each trainer log")
  ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/core_speed.json"))
  args = ap.parse_args()
  out = {"date": datetime.date.today().isoformat(), "jax": jax.__version__,
         "cpus": os.cpu_count(), "command": "python " + " ".join(sys.argv)}
  out["steps"] = steps_part(args.model, args.steps, args.repeats)
  print(json.dumps(out["steps"]), flush=True)
  out["trainer"] = trainer_part(args.train_steps, args.block_steps)
  print(json.dumps(out["trainer"]), flush=True)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
