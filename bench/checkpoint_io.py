"""Checkpoint save: how long a save blocks training with and without the manifest, side by side, and
when the files, the manifest and a restore are done.

  python bench/checkpoint_io.py [--repeats 3] [--out /tmp/ckpt_bench]

Each state is saved `repeats` times per mode, the modes interleaved, each save started as soon as
orbax has finished the previous one (so the background sealing of one save overlaps the next save,
as it does in a run that checkpoints often). Modes: no manifest; the manifest sealed in the
background (dept_jax now); the manifest hashed on the training thread at the start of the next
save (dept_jax before issue 12), which is what that next save then waited for.

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


@jax.jit
def _next_step_stand_in(x):
  return x.ravel()[0] + 1


def _save_series(ckpt, state, name, repeats, seal_on_next_save):
  """Per save: (seconds save() blocked, seconds until a computation queued right after it ran
  (what the next training step would wait for), seconds until orbax finished, seconds until
  sealed)."""
  rows, starts = [], []
  leaf = jax.tree.leaves(state)[0]
  for r in range(repeats):
    t0, wall0 = time.perf_counter(), time.time()
    if seal_on_next_save:
      ckpt.wait_until_sealed()  # what the old save did first: hash the previous step's files
    ckpt.save(r, state, {"streams": []}, {"bench": name})
    blocked = time.perf_counter() - t0
    jax.block_until_ready(_next_step_stand_in(leaf))
    device = time.perf_counter() - t0
    ckpt.manager.wait_until_finished()
    rows.append([blocked, device, time.perf_counter() - t0])
    starts.append(wall0)
  ckpt.wait_until_sealed()
  for r, row in enumerate(rows):
    manifest = os.path.join(ckpt.manifest_dir, f"{r}.json")
    row.append(os.path.getmtime(manifest) - starts[r] if os.path.exists(manifest) else float("nan"))
  return rows


def measure(name, config, out, repeats):
  prog = program_for(config)
  state = prog.init(jax.random.key(0))
  jax.block_until_ready(state)
  config.checkpoint.keep = 0  # keep every step: the manifests' times are read at the end
  modes = {"none": (False, False), "background": (True, False), "next save": (True, True)}
  results = {m: [] for m in modes}
  for _ in range(repeats):  # interleaved: one series per mode per round
    for mode, (manifests, at_next) in modes.items():
      workdir = os.path.join(out, name)
      shutil.rmtree(workdir, ignore_errors=True)
      ckpt = Checkpointer(workdir, config.checkpoint, manifests=manifests)
      rows = _save_series(ckpt, state, name, 3, at_next)
      results[mode] += rows[1:]  # the first save of a series has nothing before it to overlap
      if mode == "background":
        t0 = time.perf_counter()
        _, restored, _, _ = ckpt.restore(prog.abstract_state, 2)  # verifies files and arrays
        jax.block_until_ready(restored)
        results.setdefault("restore", []).append(time.perf_counter() - t0)
      ckpt.close()
      shutil.rmtree(workdir, ignore_errors=True)
  med = {m: np.median(np.asarray(v), axis=0) for m, v in results.items()}
  return nbytes(state), med


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
        f"median of {2 * a.repeats} saves per mode")
  print("| state | bytes | manifest | save() blocks s | next step waits s | orbax done s | "
        "sealed after s | restore + verify s |")
  print("|---|---|---|---|---|---|---|---|")
  for name, cfg in (("demo (spec_opt, 6 sources)", demo), ("125M preset, one source slice", one)):
    size, m = measure(name.split()[0], cfg, a.out, a.repeats)
    for mode in ("none", "background", "next save"):
      block, device, done, sealed = m[mode]
      restore = f"{float(m['restore']):.2f}" if mode == "background" else ""
      print(f"| {name} | {size / 1e6:,.1f} MB | {mode} | {block:.3f} | {device:.3f} | {done:.2f} | "
            f"{sealed:.2f} | {restore} |")
    print(f"| {name} | | background / none | {m['background'][0] / m['none'][0]:.2f}x | "
          f"{m['background'][1] / m['none'][1]:.2f}x | | | |")
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
