"""Communication and memory of every variant of the paper presets, read from compiled HLO.

  python bench/comm_memory.py [--presets tiny,pile_125m,pile_350m,mc4_1b_spec_opt] \
      [--out bench/results/comm_memory.json]

Each preset is built for one device per source (16 fake CPU devices at most), as the paper ran
one worker per source. For every variant it compiles (AOT, nothing allocated):
  * the DEPT outer step: bytes of the collectives whose replica groups span `source` slices
    (hlo_comm.cross_source_bytes), i.e. what each source slice sends per round;
  * the local step: bytes crossing `source` (must be 0) and the per-device memory analysis;
  * STD: one model data-parallel over the same devices; every collective of its training step
    (the gradient all-reduce) counts, every step.
Per training step, DEPT's traffic is the outer bytes / local_steps. Embedding parameters per
source come from the state's shapes (trim keeps all rows here: without data no row is unused).
"""
from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=16").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from dept_jax import config_lib, dept, experiment, model  # noqa: E402
from dept_jax.mesh import make_mesh  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "bench"))
import hlo_loops  # noqa: E402

VARIANTS = ("std", "glob", "trim", "spec", "spec_opt")


def load_config(name: str, variant: str):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", name + ".py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(variant)


def memory(compiled) -> dict:
  m = compiled.memory_analysis()
  keys = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
          "alias_size_in_bytes")
  return {k: int(getattr(m, k)) for k in keys} if m is not None else {}


def all_collective_bytes(hlo_text: str, n: int) -> int:
  """Every collective of a data-parallel step, times how often it runs (scan loops included)."""
  return hlo_loops.bytes_per_run(hlo_text, n, n, crossing_only=False)


def cross_source(hlo_text: str, mesh) -> int:
  n = mesh.devices.size
  return hlo_loops.bytes_per_run(hlo_text, n, n // mesh.shape["source"], crossing_only=True)


def measure(preset: str, variant: str, compile_local: bool) -> dict:
  config = load_config(preset, variant)
  K = config.data.num_sources
  n = K  # one device per source (STD: data-parallel over the same K devices)
  shape = config_lib.validate(config, n)
  mesh = make_mesh(shape, jax.devices()[:n])
  vocab = experiment.abstract_vocab(config)
  prog = dept.build(config, mesh, vocab, metric_sources=K)
  state = prog.abstract_state
  cfg = config.model
  body_params = model.count_params(state["global"]["body"]) if variant != "std" else \
      sum(int(np.prod(x.shape[1:])) for x in jax.tree.leaves(state["slots"]["params"]["body"]))
  embed_rows = vocab.rows if variant != "std" else vocab.global_size
  embed_params = embed_rows * cfg.d_model * (1 if cfg.tie_embeddings else 2)
  out = {"preset": preset, "variant": variant, "sources": K, "devices": n, "mesh": shape,
         "local_steps": config.local_steps, "d_model": cfg.d_model, "n_layers": cfg.n_layers,
         "body_params": body_params, "embed_params_per_source": embed_params,
         "embed_rows_per_source": embed_rows, "dtype": cfg.dtype}
  t = time.perf_counter()
  if variant == "std":
    lowered = prog.local_step.lower(state, experiment.abstract_batch(config, prog))
    compiled = lowered.compile()
    out["step_bytes"] = all_collective_bytes(compiled.as_text(), n)
    out["local_memory"] = memory(compiled)
    out["outer_bytes"] = 0
    out["bytes_per_step"] = out["step_bytes"]
  else:
    vec = lambda dt: jax.ShapeDtypeStruct((prog.slots,), dt)
    outer = prog.outer_step.lower(state, vec("int32"), vec("float32")).compile()
    out["outer_bytes"] = cross_source(outer.as_text(), mesh)
    out["outer_payload_bytes"] = dept.outer_payload_bytes(prog)
    out["outer_memory"] = memory(outer)
    if compile_local:
      local = prog.local_step.lower(state, experiment.abstract_batch(config, prog)).compile()
      out["local_cross_source_bytes"] = cross_source(local.as_text(), mesh)
      out["local_memory"] = memory(local)
    out["bytes_per_step"] = out["outer_bytes"] / config.local_steps
  # The formula check: a model's worth of float32 gradients / the shared pytree.
  out["model_bytes_f32"] = 4 * (body_params + embed_params)
  out["compile_s"] = round(time.perf_counter() - t, 1)
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--presets", default="tiny,pile_125m,pile_350m,mc4_1b_spec_opt")
  ap.add_argument("--variants", default=",".join(VARIANTS))
  ap.add_argument("--local_for", default="std,spec_opt,glob",
                  help="variants whose local step is also compiled (memory analysis)")
  ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/comm_memory.json"))
  args = ap.parse_args()
  rows = []
  for preset in args.presets.split(","):
    for variant in args.variants.split(","):
      r = measure(preset, variant, variant in args.local_for.split(","))
      print(json.dumps(r), flush=True)
      rows.append(r)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"date": datetime.date.today().isoformat(), "jax": jax.__version__,
               "command": "python " + " ".join(sys.argv), "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
