"""Bytes across `source` in one round when fewer sources train than exist (a bank keeps the
others' tables and AdamW moments), read from the compiled HLO of begin_round and outer_step.

  python bench/bank_traffic.py [--base /tmp/base]

One fake CPU device per slot (the paper's one worker per source). For each case it compiles
(AOT, nothing allocated) begin_round and outer_step and sums the payloads of the collectives whose
replica groups span `source` slices (hlo_comm.cross_source_bytes), next to the body's bytes and
the payload the trainer logs (dept.outer_payload_bytes). With --base, the same cases are compiled
with the code in that directory (e.g. `git archive d095785 | tar -x -C /tmp/base`) in a separate
process, for the before/after rows. Writes bench/results/bank_traffic.json.
"""
from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (config file, variant, sources per round): tiny has 4 sources, the 125M preset 16.
CASES = (("tiny", "spec", 2), ("tiny", "spec_opt", 2), ("tiny", "trim", 2),
         ("pile_125m", "spec", 8))


def measure(code: str, name: str, variant: str, per_round: int) -> dict:
  """Runs with `code`'s dept_jax first on sys.path."""
  sys.path.insert(0, code)
  import jax
  import numpy as np

  from dept_jax import config_lib, dept, experiment, hlo_comm, model
  from dept_jax.mesh import make_mesh
  spec = importlib.util.spec_from_file_location(name, os.path.join(code, "configs", name + ".py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(variant)
  c.outer.sources_per_round = per_round
  shape = config_lib.validate(c, per_round)
  mesh = make_mesh(shape, jax.devices()[:per_round])
  prog = dept.build(c, mesh, experiment.abstract_vocab(c))
  state = prog.abstract_state
  vec = lambda dt: jax.ShapeDtypeStruct((prog.slots,), dt)
  begin = prog.begin_round.lower(state, vec(np.int32)).compile()
  outer = prog.outer_step.lower(state, vec(np.int32), vec(np.float32)).compile()
  body = 4 * model.count_params(state["global"]["body"])
  return {"config": name, "variant": variant, "sources": c.data.num_sources,
          "sources_per_round": per_round, "mesh": dict(shape), "body_bytes": body,
          "begin_round_bytes": hlo_comm.cross_source_bytes(begin.as_text(), mesh),
          "outer_step_bytes": hlo_comm.cross_source_bytes(outer.as_text(), mesh),
          "payload_bytes_logged": dept.outer_payload_bytes(prog)}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--base", default="")
  ap.add_argument("--base_label", default="d095785", help="how the tables name the --base code")
  ap.add_argument("--child", default="")
  ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/bank_traffic.json"))
  args = ap.parse_args()
  if args.child:  # one case with another checkout's code: print its row
    name, variant, per_round = args.child.split(",")
    print(json.dumps(measure(args.base, name, variant, int(per_round))))
    return
  rows = []
  for name, variant, per_round in CASES:
    row = {"code": "this checkout", **measure(ROOT, name, variant, per_round)}
    print(json.dumps(row), flush=True)
    rows.append(row)
    if args.base:
      out = subprocess.run([sys.executable, os.path.abspath(__file__), "--base", args.base,
                            "--child", f"{name},{variant},{per_round}"],
                           capture_output=True, text=True, check=True, cwd=args.base,
                           env=dict(os.environ, PYTHONPATH=args.base))
      row = {"code": args.base_label, **json.loads(out.stdout.strip().splitlines()[-1])}
      print(json.dumps(row), flush=True)
      rows.append(row)
  with open(args.out, "w") as f:
    json.dump({"date": datetime.date.today().isoformat(), "command": "python " + " ".join(sys.argv),
               "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
