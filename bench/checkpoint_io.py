"""Checkpoint save (blocking part, total incl. checksum manifest) and restore times.

  python bench/checkpoint_io.py [--repeats 3] [--out /tmp/ckpt_bench]

States: the demo model (SPEC-OPT, 6 sources) and the 125M preset as one source slice holds it
(body + one 50,257-row table + AdamW moments; the full 16-source state is listed too, not written:
it would not fit this machine's disk budget comfortably). Real arrays from program.init, one device.
"""
import argparse
import os
import shutil
import sys
import time

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dept_jax import config_lib, dept, experiment  # noqa: E402
from dept_jax.checkpoint import Checkpointer  # noqa: E402
from dept_jax.mesh import make_mesh  # noqa: E402


def load_config(path, arg=""):
  import importlib.util
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, path))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg) if arg else mod.get_config()


def nbytes(tree):
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def program_for(config):
  shape = config_lib.validate(config, jax.device_count())
  return dept.build(config, make_mesh(shape), experiment.abstract_vocab(config))


def measure(name, config, out, repeats):
  prog = program_for(config)
  state = prog.init(jax.random.key(0))
  jax.block_until_ready(state)
  size = nbytes(state)
  workdir = os.path.join(out, name)
  shutil.rmtree(workdir, ignore_errors=True)
  ckpt = Checkpointer(workdir, config.checkpoint)
  rows = []
  for r in range(repeats):
    t0 = time.perf_counter()
    ckpt.save(r, state, {"streams": []}, {"bench": name})
    t_block = time.perf_counter() - t0
    ckpt.manager.wait_until_finished()
    t_orbax = time.perf_counter() - t0
    ckpt.seal()
    t_total = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, restored, _, _ = ckpt.restore(prog.abstract_state, r)
    jax.block_until_ready(restored)
    t_restore = time.perf_counter() - t0
    rows.append((t_block, t_orbax, t_total, t_restore))
  ckpt.close()
  shutil.rmtree(workdir, ignore_errors=True)
  med = np.median(np.asarray(rows), axis=0)
  return size, med


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--out", default="/tmp/dept_jax_ckpt_bench")
  a = p.parse_args()
  demo = load_config("configs/demo.py")
  demo.data.kind = "synthetic"  # shapes only: abstract_vocab reads sizes from the config
  preset = load_config("configs/pile_125m.py", "spec")
  one = load_config("configs/pile_125m.py", "spec")
  one.data.num_sources = 1
  one.mesh.data = 1
  one.batch_size = 1
  print(f"# checkpoint I/O, {time.strftime('%Y-%m-%d')}, {jax.device_count()} device(s), "
        f"median of {a.repeats}")
  print("| state | bytes | save blocking s | orbax done s | + manifest s | restore s |")
  print("|---|---|---|---|---|---|")
  for name, cfg in (("demo (spec_opt, 6 sources)", demo), ("125M preset, one source slice", one)):
    size, (b, o, t, r) = measure(name.split()[0], cfg, a.out, a.repeats)
    print(f"| {name} | {size / 1e6:,.1f} MB | {b:.3f} | {o:.2f} | {t:.2f} | {r:.2f} |")
  full = sum(int(np.prod(x.shape)) * 4 for x in jax.tree.leaves(
      program_abstract(preset)))
  print(f"\nFull 125M preset state (16 sources, spec): {full / 1e9:.2f} GB (not written here).")


def program_abstract(config):
  """The whole state's shapes without devices: init traced with eval_shape."""
  vocab = experiment.abstract_vocab(config)
  mesh = jax.sharding.AbstractMesh((16, 1, 1, 1), config_lib.MESH_AXES)
  return dept.build(config, mesh, vocab).abstract_state


if __name__ == "__main__":
  main()
