"""DEPT local step vs a plain single-model step only, with long interleaved blocks and each
candidate built twice (A B A' B' ...), so the run shows its own noise (A vs A').

  python bench/dept_vs_plain.py [--models tiny,demo] [--steps 20] [--repeats 21]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import step_speed as s  # noqa: E402  (sets the CPU platform and OMP policy first)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--models", default="tiny,demo")
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--repeats", type=int, default=21)
  ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/dept_vs_plain.json"))
  args = ap.parse_args()
  rows = []
  for name in args.models.split(","):
    c, V, _ = s.model_setup(name)
    c.model.dtype = "float32"
    B = c.batch_size
    cands = {"plain": s.jax_plain(c, V, B), "dept": s.jax_dept(c, V, B, 1),
             "plain_again": s.jax_plain(c, V, B), "dept_again": s.jax_dept(c, V, B, 1)}
    load = os.getloadavg()[0]
    sec = s.interleave(cands, args.steps, args.repeats)
    row = {"model": name, "step_s": sec, "load_avg_1min": load,
           "ratio_dept_vs_plain": (sec["plain"] + sec["plain_again"]) /
                                  (sec["dept"] + sec["dept_again"]),
           "noise_plain_vs_plain_again": sec["plain_again"] / sec["plain"]}
    print(json.dumps(row), flush=True)
    rows.append(row)
  with open(args.out, "w") as f:
    json.dump({"date": datetime.date.today().isoformat(), "command": "python " + " ".join(sys.argv),
               "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
