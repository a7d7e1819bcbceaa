"""Losses of this checkout against another (the code before a refactor), from the same parameters
and the same data, step by step.

  git archive REV | tar -x -C /tmp/base        # the reference code, outside this repository
  python bench/compare_main.py --base /tmp/base --base_name REV [--configs tiny,demo] [--steps 100]

For each config and variant, the reference code runs first: it builds its initial state, saves
the parameters, and trains `--steps` steps with the real trainer (log every step). This checkout
then starts from exactly those parameters (injected into its own fresh state) and trains the same
steps on the same data (the demo reuses the reference run's tokenizers). Each per-source training
loss of every step is compared; `max_abs_diff` is the largest difference over all of them, and
`first_step_differing` the first step whose losses are not bit for bit equal. The reference and
this checkout run in separate processes with their own PYTHONPATH; the data code is the one in
each checkout, so REV must have the same data code (the comparison is meant for changes to the
core: for the core merge, REV is b686e67, main just before it).

--patched (for REV = d095785, the core before issue 11) also runs the reference with only the two
numerical changes issue 11 asks for, made by
`patch_reference` below (no vmap of one around the slot loop on a single slice; FedAvg assigns
the body's weighted mean sum(w x) / sum(w) instead of g - (g - mean)), and compares it with both:
reference vs patched shows what those changes alone do to the losses (rounding that Adam and 100
steps amplify), patched vs this checkout what the rest of the refactor does.
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


def patch_reference(base: str, out: str) -> str:
  """A copy of the reference code with issue 11's two numerical changes and nothing else."""
  shutil.rmtree(out, ignore_errors=True)
  shutil.copytree(base, out)
  path = os.path.join(out, "dept_jax", "dept.py")
  src = open(path).read()
  edits = [
      ("    split = lambda x: x.reshape((n_slices, per_slice) + x.shape[1:])",
       "    if n_slices == 1:  # issue 11: no vmap over one slice\n"
       "      return jax.lax.map(lambda b: fn(*b), args)\n"
       "    split = lambda x: x.reshape((n_slices, per_slice) + x.shape[1:])"),
      ('    new_global = {"body": glob["body"] if config.freeze_body else\n'
       '                  optax.apply_updates(glob["body"], updates["body"])}',
       '    new_global = {"body": glob["body"] if config.freeze_body else\n'
       '                  optax.apply_updates(glob["body"], updates["body"])}\n'
       '    if config.outer.optimizer == "fedavg" and not config.freeze_body:  # issue 11: the mean\n'
       '      new_global["body"] = jax.tree.map(\n'
       '          lambda x: jnp.tensordot(weights_S.astype(x.dtype), x, axes=1)\n'
       '          / weights_S.sum().astype(x.dtype), params["body"])'),
  ]
  for old, new in edits:
    if src.count(old) != 1:
      raise RuntimeError(f"patch_reference: {old!r} not found once in {path}")
    src = src.replace(old, new)
  open(path, "w").write(src)
  return out


def _first_differing(a, b):
  steps = sorted({s for s, _ in a})
  return next((s for s in steps if any(a[k] != b[k] for k in a if k[0] == s)), None)


def _losses(workdir):
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return {(r["step"], k): v for r in rows for k, v in r.items()
          if k.startswith("train/") and k.endswith("/loss")}, \
         {(r["step"], k): v for r in rows for k, v in r.items()
          if k.startswith("eval/") and k.endswith("/loss")}


def _diff(a, b, a_eval, b_eval):
  if set(a) != set(b):
    raise RuntimeError("logged losses differ in keys")
  worst = max(a, key=lambda k: abs(a[k] - b[k]))
  return {"max_abs_diff": abs(a[worst] - b[worst]), "losses_compared": len(a),
          "worst": {"step": worst[0], "key": worst[1], "a": a[worst], "b": b[worst]},
          "first_step_differing": _first_differing(a, b),
          "max_abs_diff_eval_loss": max((abs(a_eval[k] - b_eval[k]) for k in a_eval),
                                        default=None)}


def compare(base, name, variant, steps, scratch, mine_code=ROOT, patched=None):
  config = CONFIGS[name].format(variant=variant)
  runs = {"base": base, "mine": mine_code}
  if patched:
    runs["patched"] = patched
  dirs = {w: os.path.join(scratch, f"{name}_{variant}_{w}") for w in runs}
  for d in dirs.values():
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
  params = os.path.join(scratch, f"{name}_{variant}_params.npz")
  seconds = {"base": _run(base, config, dirs["base"], steps, "--save_params", params)}
  for w in runs:
    if w == "base":
      continue
    if os.path.isdir(os.path.join(dirs["base"], "tokenizers")):  # same tokenizers: same data
      shutil.copytree(os.path.join(dirs["base"], "tokenizers"), os.path.join(dirs[w], "tokenizers"))
    seconds[w] = _run(runs[w], config, dirs[w], steps, "--load_params", params)
  got = {w: _losses(d) for w, d in dirs.items()}
  out = {"config": name, "variant": variant, "steps": steps, "seconds": seconds,
         **_diff(got["base"][0], got["mine"][0], got["base"][1], got["mine"][1])}
  if patched:
    out["base_vs_patched"] = _diff(got["base"][0], got["patched"][0], got["base"][1],
                                   got["patched"][1])
    out["patched_vs_mine"] = _diff(got["patched"][0], got["mine"][0], got["patched"][1],
                                   got["mine"][1])
  out["first_loss"] = {k: v for (s, k), v in got["mine"][0].items() if s == 1}
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--child", action="store_true")
  ap.add_argument("--code")
  ap.add_argument("--config")
  ap.add_argument("--workdir")
  ap.add_argument("--save_params")
  ap.add_argument("--load_params")
  ap.add_argument("--base", default="/tmp/base")
  ap.add_argument("--base_name", default="", help="the commit the reference code is (for the record)")
  ap.add_argument("--configs", default="tiny,demo")
  ap.add_argument("--variants", default=",".join(VARIANTS))
  ap.add_argument("--steps", type=int, default=100)
  ap.add_argument("--scratch", default="/tmp/dept_jax_compare")
  ap.add_argument("--tolerance", type=float, default=1e-5)
  ap.add_argument("--noise", action="store_true",
                  help="run the reference code against itself instead (the noise floor)")
  ap.add_argument("--patched", action="store_true",
                  help="also run the reference with only issue 11's numerical changes")
  ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/compare_main.json"))
  args = ap.parse_args()
  if args.child:
    return _child(args)
  base = os.path.abspath(args.base)
  patched = patch_reference(base, os.path.join(args.scratch, "patched_code")) if args.patched \
      else None
  rows = []
  for name in args.configs.split(","):
    for variant in args.variants.split(","):
      r = compare(base, name, variant, args.steps, args.scratch,
                  mine_code=base if args.noise else ROOT, patched=patched)
      r["within_tolerance"] = r["max_abs_diff"] <= args.tolerance
      print(json.dumps(r), flush=True)
      rows.append(r)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"date": datetime.date.today().isoformat(), "base": base,
               "base_name": args.base_name,
               "compared": base if args.noise else ROOT,
               "command": "python " + " ".join(sys.argv), "tolerance": args.tolerance,
               "all_within_tolerance": all(r["within_tolerance"] for r in rows), "rows": rows},
              f, indent=1)


if __name__ == "__main__":
  main()
