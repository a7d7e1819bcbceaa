"""Is the input pipeline ever what the trainer waits for? Pipeline tokens/s vs training tokens/s.

  python bench/data_pipeline.py [--train_steps 30] [--skip_train]

Measures, on this machine:
  build      reading + tokenizing + packing the demo's sources (tokenizers already trained), tokens/s
  serve      next_rows(batch_size) from every source's grain stream, steady state, tokens/s
  train      the trainer's own tokens_per_sec (metrics.jsonl) for configs/tiny.py and configs/demo.py
and prints a markdown table for bench/RESULTS.md. Target: serve >= 5x train.
"""
import argparse
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def load_config(path, arg=None):
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, path))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg) if arg is not None else mod.get_config()


def bench_pipeline(workdir):
  from dept_jax.data import build_data
  c = load_config("configs/demo.py")
  t0 = time.perf_counter()
  build_data(c, workdir)  # corpus cache and tokenizers, if not there yet
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  bundle = build_data(c, workdir)
  build_s = time.perf_counter() - t0
  stream_tokens = sum(len(s.stream) for s in bundle.streams)
  n, B, L = 300, c.batch_size, c.seq_len
  t0 = time.perf_counter()
  for _ in range(n):
    for s in bundle.streams:
      s.next_rows(B)
  serve_s = time.perf_counter() - t0
  return {"first_build_s": first, "build_s": build_s, "build_tokens": stream_tokens,
          "build_tok_s": stream_tokens / build_s, "sources": len(bundle.streams),
          "serve_tok_s": n * len(bundle.streams) * B * L / serve_s,
          "serve_ms_per_step": 1e3 * serve_s / n, "batch": B, "seq_len": L}


def bench_train(config_path, arg, steps, workdir):
  from dept_jax import train
  c = load_config(config_path, arg)
  with c.unlocked():
    c.steps, c.local_steps = steps, steps // 2
    c.log.every = steps // 2
    c.log.progress = False
  train.train(c, workdir)
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  tps = [r["tokens_per_sec"] for r in rows if "tokens_per_sec" in r]
  return tps[-1]  # the second logging window: compile time excluded


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--train_steps", type=int, default=30)
  ap.add_argument("--skip_train", action="store_true")
  args = ap.parse_args()
  tmp = tempfile.mkdtemp(prefix="bench_data_")
  try:
    p = bench_pipeline(os.path.join(tmp, "demo_data"))
    print(json.dumps(p, indent=1))
    train_tps = {}
    if not args.skip_train:
      train_tps["tiny"] = bench_train("configs/tiny.py", "spec", args.train_steps,
                                      os.path.join(tmp, "tiny"))
      # Reuse the tokenizers trained above: this measures training, not tokenizer training.
      shutil.copytree(os.path.join(tmp, "demo_data", "tokenizers"),
                      os.path.join(tmp, "demo", "tokenizers"))
      train_tps["demo"] = bench_train("configs/demo.py", None, args.train_steps,
                                      os.path.join(tmp, "demo"))
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d')}")
    print("| measure | tokens/s | pipeline / this |")
    print("|---|---|---|")
    print(f"| pipeline serve (next_rows, {p['sources']} sources x {p['batch']}x{p['seq_len']}) "
          f"| {p['serve_tok_s']:,.0f} | 1x |")
    print(f"| pipeline build (read+tokenize+pack {p['build_tokens']:,} tokens in "
          f"{p['build_s']:.1f} s) | {p['build_tok_s']:,.0f} | |")
    for name, tps in train_tps.items():
      print(f"| train {name} (trainer tokens_per_sec) | {tps:,.0f} | "
            f"{p['serve_tok_s'] / tps:,.0f}x |")
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
