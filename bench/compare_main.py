"""Losses of this checkout against another (the code before a refactor), from the same parameters
and the same data, step by step.

  git archive d095785 | tar -x -C /tmp/base        # the reference code, outside this repository
  python bench/compare_main.py --base /tmp/base [--configs tiny,demo] [--steps 100]

For each config and variant, the reference code runs first: it builds its initial state, saves
the parameters, and trains `--steps` steps with the real trainer (log every step). This checkout
then starts from exactly those parameters (injected into its own fresh state) and trains the same
steps on the same data (the demo reuses the reference run's tokenizers). Each per-source training
loss of every step is compared; `max_abs_diff` is the largest difference over all of them. The
reference and this checkout run in separate processes with their own PYTHONPATH; the data code is
the one in each checkout (identical here: the comparison is meant for changes to the core).
Writes bench/results/compare_main.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("std", "glob", "trim", "spec", "spec_opt")
CONFIGS = {"tiny": "configs/tiny.py:{variant}", "demo": "configs/demo.py:{variant}"}


# ----------------------------------------------------------------------------- child process


def _child(args):
  """Runs inside one checkout (its dept_jax on PYTHONPATH): train with injected parameters."""
  import importlib.util

  import jax
  import numpy as np

  from dept_jax import experiment, train
  name, _, arg = args.config.partition(":")
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(args.code, name))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(arg)
  c.steps = args.steps
  if c.steps % c.local_steps:
    c.local_steps = c.steps
  c.log.update(every=1, progress=False, tensorboard=False)
  c.checkpoint.update(at_round_end=False, async_save=False)

  real_setup = experiment.setup

  def setup(config, workdir, devices=None):
    exp = real_setup(config, workdir, devices)
    init = exp.program.init

    def init_from_saved(key):
      state = init(key)
      sh = exp.program.state_shardings
      if args.save_params:
        host = jax.device_get({"global": state["global"], "slots": state["slots"]["params"]})
        flat = {jax.tree_util.keystr(p): np.asarray(x)
                for p, x in jax.tree_util.tree_flatten_with_path(host)[0]}
        np.savez(args.save_params, **flat)
        return state
      saved = np.load(args.load_params)
      mine = {"global": state["global"], "slots": state["slots"]["params"]}
      paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(mine)[0]]
      if sorted(paths) != sorted(saved.files):
        raise SystemExit(f"parameter trees differ: {sorted(paths)} vs {sorted(saved.files)}")
      loaded = jax.tree.unflatten(jax.tree.structure(mine), [saved[p] for p in paths])
      loaded = jax.device_put(loaded, {"global": sh["global"], "slots": sh["slots"]["params"]})
      return dict(state, **{"global": loaded["global"],
                            "slots": dict(state["slots"], params=loaded["slots"])})

    exp.program = exp.program._replace(init=init_from_saved)
    return exp

  experiment.setup = setup
  t = time.perf_counter()
  train.train(c, args.workdir)
  print(json.dumps({"seconds": time.perf_counter() - t}))


# ----------------------------------------------------------------------------- driver


def _run(code, config, workdir, steps, params_flag, params_path):
  env = dict(os.environ, PYTHONPATH=code, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, os.path.abspath(__file__), "--child", "--code", code, "--config", config,
         "--workdir", workdir, "--steps", str(steps), params_flag, params_path]
  out = subprocess.run(cmd, env=env, cwd=workdir, capture_output=True, text=True)
  if out.returncode:
    raise RuntimeError(f"{code} {config} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def _losses(workdir):
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return {(r["step"], k): v for r in rows for k, v in r.items()
          if k.startswith("train/") and k.endswith("/loss")}, \
         {(r["step"], k): v for r in rows for k, v in r.items()
          if k.startswith("eval/") and k.endswith("/loss")}


def compare(base, name, variant, steps, scratch):
  config = CONFIGS[name].format(variant=variant)
  ref_dir, mine_dir = (os.path.join(scratch, f"{name}_{variant}_{w}") for w in ("base", "mine"))
  for d in (ref_dir, mine_dir):
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
  params = os.path.join(scratch, f"{name}_{variant}_params.npz")
  t_ref = _run(base, config, ref_dir, steps, "--save_params", params)
  if os.path.isdir(os.path.join(ref_dir, "tokenizers")):  # same tokenizers, so the same data
    shutil.copytree(os.path.join(ref_dir, "tokenizers"), os.path.join(mine_dir, "tokenizers"))
  t_mine = _run(ROOT, config, mine_dir, steps, "--load_params", params)
  (ref, ref_eval), (mine, mine_eval) = _losses(ref_dir), _losses(mine_dir)
  if set(ref) != set(mine):
    raise RuntimeError(f"{name}/{variant}: logged losses differ in keys")
  diffs = [abs(ref[k] - mine[k]) for k in ref]
  worst = max(ref, key=lambda k: abs(ref[k] - mine[k]))
  eval_diff = max((abs(ref_eval[k] - mine_eval[k]) for k in ref_eval), default=None)
  return {"config": name, "variant": variant, "steps": steps, "losses_compared": len(diffs),
          "max_abs_diff": max(diffs), "worst": {"step": worst[0], "key": worst[1],
                                                "base": ref[worst], "mine": mine[worst]},
          "max_abs_diff_eval_loss": eval_diff, "seconds_base": t_ref, "seconds_mine": t_mine,
          "first_loss": {k: v for (s, k), v in mine.items() if s == 1}}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--child", action="store_true")
  ap.add_argument("--code")
  ap.add_argument("--config")
  ap.add_argument("--workdir")
  ap.add_argument("--save_params")
  ap.add_argument("--load_params")
  ap.add_argument("--base", default="/tmp/base")
  ap.add_argument("--configs", default="tiny,demo")
  ap.add_argument("--variants", default=",".join(VARIANTS))
  ap.add_argument("--steps", type=int, default=100)
  ap.add_argument("--scratch", default="/tmp/dept_jax_compare")
  ap.add_argument("--tolerance", type=float, default=1e-5)
  ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/compare_main.json"))
  args = ap.parse_args()
  if args.child:
    return _child(args)
  base = os.path.abspath(args.base)
  rows = []
  for name in args.configs.split(","):
    for variant in args.variants.split(","):
      r = compare(base, name, variant, args.steps, args.scratch)
      r["within_tolerance"] = r["max_abs_diff"] <= args.tolerance
      print(json.dumps(r), flush=True)
      rows.append(r)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"date": datetime.date.today().isoformat(), "base": base,
               "command": "python " + " ".join(sys.argv), "tolerance": args.tolerance,
               "all_within_tolerance": all(r["within_tolerance"] for r in rows), "rows": rows},
              f, indent=1)


if __name__ == "__main__":
  main()
