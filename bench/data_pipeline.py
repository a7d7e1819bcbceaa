"""The data path at scale: preparing once, starting fresh, serving against training.

  python bench/data_pipeline.py [--sizes 8,32,128] [--skip_scale] [--skip_serve] [--skip_format]

scale   a 4-source folder corpus at each size (MB of text per source, generated here): the
        token cache prepared once (`--mode=prepare`, MB/s per core), then a fresh training start
        on it (`python -m dept_jax.main`, 1 step, new workdir): wall time and peak RSS, each in
        its own process. Target: the fresh start's time and RSS grow < 1.5x across the sizes.
serve   the demo's batches (6 sources, 8 x 128 each) built by the trainer's own feed (grain
        threads, prefetch) against the demo trainer's tokens/s. Target: serving >= 5x training.
format  random reads of seq_len+1 windows: the flat token files dept_jax uses against the same
        windows stored as ArrayRecord records (array_record's random-access reader).
Writes bench/results/data_pipeline.json and prints markdown for bench/RESULTS.md.
"""
import argparse
import importlib.util
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
KINDS = ("latin", "cyrillic", "greek", "code")


def load_config(path, arg=None):
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, path))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg) if arg is not None else mod.get_config()


def write_corpus(root: str, mb_per_source: int, seed: int = 0):
  """root/<kind>/partNN.txt: word salad from a per-source Zipf lexicon, 8 MB per file, documents
  separated by blank lines (generated in vectorised blocks: 128 MB takes seconds)."""
  sys.path.insert(0, os.path.join(ROOT, "tests"))
  from test_data_fixtures import SYLLABLES
  for k, kind in enumerate(KINDS):
    rng = np.random.default_rng([seed, k])
    syl = SYLLABLES[kind]
    lexicon = np.asarray(["".join(rng.choice(syl, size=rng.integers(1, 4))) for _ in range(5000)])
    p = 1.0 / np.arange(1, len(lexicon) + 1)
    p /= p.sum()
    os.makedirs(os.path.join(root, kind), exist_ok=True)
    for part in range(max(1, mb_per_source // 8)):
      target, out = min(8, mb_per_source) << 20, []
      size = 0
      while size < target:
        words = lexicon[rng.choice(len(lexicon), size=4096, p=p)]
        lines = [" ".join(words[i:i + 12]) for i in range(0, 4096, 12)]
        doc = "\n".join(lines) + "\n\n"
        out.append(doc)
        size += len(doc.encode())
      with open(os.path.join(root, kind, f"part{part:02d}.txt"), "w") as f:
        f.write("".join(out))


def timed(cmd, env) -> dict:
  """Wall seconds and peak RSS (MB) of cmd, run in a wrapper process of its own so the RSS is
  this command's (its worker processes included)."""
  wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
             "r = subprocess.run(sys.argv[1:]); w = time.perf_counter() - t; "
             "print('BENCH', r.returncode, w, "
             "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
  out = subprocess.run([sys.executable, "-c", wrapper, *cmd], env=env, cwd=ROOT,
                       capture_output=True, text=True)
  line = [ln for ln in out.stdout.splitlines() if ln.startswith("BENCH")][-1].split()
  if line[1] != "0":
    raise RuntimeError(f"{cmd} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
  res = {"wall_s": float(line[2]), "peak_rss_mb": int(line[3]) / 1024}
  first = [ln for ln in out.stdout.splitlines() if "first step done" in ln]
  if first:  # "... done X s after start (data and program ready after Y s)"
    words = first[0].split()
    res["first_step_s"] = float(words[words.index("done") + 1])
    res["setup_s"] = float(words[words.index("after", words.index("ready")) + 1])
  return res


def bench_scale(sizes, tmp) -> list:
  env = dict(os.environ, JAX_PLATFORMS="cpu", DEPT_JAX_CACHE=os.path.join(tmp, "cache"))
  common = ["--config.data.vocab_size=2048", "--config.variant=trim",
            "--config.data.tokenizer_train_bytes=2000000", "--config.log.progress=False"]
  rows = []
  for mb in sizes:
    corpus = os.path.join(tmp, f"corpus{mb}")
    write_corpus(corpus, mb)
    cfg = ["--config", f"configs/folders.py:{corpus}", *common]
    prep = timed([sys.executable, "-m", "dept_jax.main", "--mode=prepare", *cfg], env)
    start = timed([sys.executable, "-m", "dept_jax.main", *cfg, "--config.steps=1",
                   "--config.local_steps=1", "--workdir", os.path.join(tmp, f"wd{mb}")], env)
    rows.append({"mb_per_source": mb, "total_mb": 4 * mb, "prepare": prep,
                 "prepare_mb_s_per_core": 4 * mb / prep["wall_s"] / os.cpu_count(),
                 "fresh_start": start})
    print(json.dumps(rows[-1]), flush=True)
    shutil.rmtree(corpus)
  return rows


def bench_serve(tmp, steps=200) -> dict:
  from dept_jax import experiment, train
  c = load_config("configs/demo.py")
  exp = experiment.setup(c, os.path.join(tmp, "demo"))
  it = exp.batches(0)
  next(it)  # threads started, first batch built
  t0 = time.perf_counter()
  for _ in range(steps):
    b = next(it)
  serve_s = time.perf_counter() - t0
  tokens = b["targets"].size
  c.steps, c.local_steps, c.log.every, c.log.progress = 60, 30, 30, False
  train.train(c, os.path.join(tmp, "demo"))
  rows = [json.loads(line) for line in open(os.path.join(tmp, "demo", "metrics.jsonl"))]
  train_tps = [r["tokens_per_sec"] for r in rows if "tokens_per_sec" in r][-1]
  return {"serve_tok_s": steps * tokens / serve_s, "serve_ms_per_step": 1e3 * serve_s / steps,
          "train_tok_s": train_tps, "tokens_per_step": tokens}


def bench_format(tmp, n_tokens=20_000_000, L=2048, reads=3000) -> dict:
  """Random window reads: flat uint16 file vs the same windows as ArrayRecord records."""
  from array_record.python import array_record_data_source, array_record_module
  from dept_jax.data import windows
  tokens = np.random.default_rng(0).integers(0, 50000, n_tokens).astype(np.uint16)
  flat = os.path.join(tmp, "flat.tokens")
  tokens.tofile(flat)
  src = windows.TokenWindows([(flat, n_tokens, "uint16")], L)
  ar = os.path.join(tmp, "windows.array_record")
  w = array_record_module.ArrayRecordWriter(ar, "group_size:1")
  for i in range(len(src)):
    w.write(tokens[i * L:i * L + L + 1].tobytes())
  w.close()
  ards = array_record_data_source.ArrayRecordDataSource([ar])
  order = np.random.default_rng(1).integers(0, len(src), reads)
  out = {}
  for name, read in (("flat", lambda i: src[i]),
                     ("array_record", lambda i: np.frombuffer(ards[i], np.uint16))):
    read(0)
    t0 = time.perf_counter()
    for i in order:
      read(int(i))
    out[f"{name}_windows_s"] = reads / (time.perf_counter() - t0)
  np.testing.assert_array_equal(src[5], np.frombuffer(ards[5], np.uint16))
  out.update(seq_len=L, flat_bytes=os.path.getsize(flat), array_record_bytes=os.path.getsize(ar))
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--sizes", default="8,32,128")
  ap.add_argument("--skip_scale", action="store_true")
  ap.add_argument("--skip_serve", action="store_true")
  ap.add_argument("--skip_format", action="store_true")
  args = ap.parse_args()
  tmp = tempfile.mkdtemp(prefix="bench_data_")
  res = {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(),
         "machine": platform.machine(), "load_average": os.getloadavg()[0]}
  try:
    if not args.skip_format:
      res["format"] = bench_format(tmp)
      print(json.dumps(res["format"]), flush=True)
    if not args.skip_serve:
      res["serve"] = bench_serve(tmp)
      print(json.dumps(res["serve"]), flush=True)
    if not args.skip_scale:
      res["scale"] = bench_scale([int(s) for s in args.sizes.split(",")], tmp)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  out = os.path.join(ROOT, "bench", "results", "data_pipeline.json")
  old = json.load(open(out)) if os.path.exists(out) else {}
  old.update(res)
  with open(out, "w") as f:
    json.dump(old, f, indent=1)
  print_markdown(old)


def print_markdown(r):
  if "scale" in r:
    print("| MB per source (x4) | prepare s | MB/s per core | data ready s | first step s | "
          "whole 1-step run s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for row in r["scale"]:
      f = row["fresh_start"]
      print(f"| {row['mb_per_source']} | {row['prepare']['wall_s']:.1f} | "
            f"{row['prepare_mb_s_per_core']:.2f} | {f.get('setup_s', float('nan')):.1f} | "
            f"{f.get('first_step_s', float('nan')):.1f} | {f['wall_s']:.1f} | "
            f"{f['peak_rss_mb']:.0f} |")
    a, b = r["scale"][0]["fresh_start"], r["scale"][-1]["fresh_start"]
    print(f"\nfresh start, largest / smallest: first step {b['first_step_s'] / a['first_step_s']:.2f}x,"
          f" whole run {b['wall_s'] / a['wall_s']:.2f}x, RSS {b['peak_rss_mb'] / a['peak_rss_mb']:.2f}x")
  if "serve" in r:
    s = r["serve"]
    print(f"\nserve {s['serve_tok_s']:,.0f} tok/s ({s['serve_ms_per_step']:.2f} ms a step) vs "
          f"train {s['train_tok_s']:,.0f} tok/s: {s['serve_tok_s'] / s['train_tok_s']:,.0f}x")
  if "format" in r:
    f = r["format"]
    print(f"\nrandom {f['seq_len'] + 1}-token windows/s: flat {f['flat_windows_s']:,.0f}, "
          f"ArrayRecord {f['array_record_windows_s']:,.0f}")


if __name__ == "__main__":
  main()
