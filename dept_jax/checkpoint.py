"""Checkpoints that always restore: orbax async saves of the whole state, the data streams'
positions and the run's metadata, each step sealed with a checksum manifest so damage is caught
and named.

Layout under WORKDIR/checkpoints/:
  <step>/{state,data,meta}    orbax
  manifests/<step>.json       sha256 of every file of the step
  damaged/<step>[.n]/         steps a fallback set aside (never deleted), each with its manifest

Sealing runs on a background thread: a step's manifest is written as soon as orbax has committed
the step (its folder appears), never on the training thread and never holding up the next save.
A restore verifies the files against the manifest, naming a changed file, and checks that every
restored number is finite (a saved state always is). A step without a manifest (the run was
killed between the commit and the end of hashing) gets only the second check, and the restore
says so.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from dept_jax.file_hash import sha256_of


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used; the message names the step, the file and the fix."""


_FALLBACK_FIX = ("Fix: rerun with --config.checkpoint.fallback=True to move it to "
                 "checkpoints/damaged/ and resume from the previous good checkpoint")


# ----------------------------------------------------------------------------- files


def _files_under(root: str) -> list[str]:
  out = []
  for dirpath, _, files in os.walk(root):
    for name in files:
      out.append(os.path.relpath(os.path.join(dirpath, name), root))
  return sorted(out)


def committed_steps(directory: str) -> list[int]:
  """Steps whose folder exists: orbax renames a step's temporary folder to <step> only once every
  file is written, so these are complete (on the local and NFS filesystems dept_jax writes to)."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory)
                if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def _write_json_atomically(path: str, obj):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f)
  os.replace(tmp, path)


def file_checksums(step_dir: str) -> dict | None:
  """sha256 of every file under step_dir; None if the step vanished meanwhile (max_to_keep)."""
  try:
    sums = {rel: sha256_of(os.path.join(step_dir, rel)) for rel in _files_under(step_dir)}
  except FileNotFoundError:
    return None
  return sums if sums and os.path.isdir(step_dir) else None


# ----------------------------------------------------------------------------- arrays


@jax.jit
def _finite_flags(tree):
  return jax.tree.map(lambda x: jnp.isfinite(x).all() if jnp.issubdtype(x.dtype, jnp.inexact)
                      else jnp.bool_(True), tree)


def nonfinite_leaves(tree) -> list[str]:
  """Paths of the floating-point arrays in tree holding a NaN or inf (every process calls it: the
  arrays may span hosts; the flags come back replicated)."""
  flags = _finite_flags(tree)
  return [jax.tree_util.keystr(p) for p, ok in jax.tree_util.tree_flatten_with_path(flags)[0]
          if not bool(np.asarray(ok.addressable_data(0)))]


# ----------------------------------------------------------------------------- sealing


class _Sealer:
  """A daemon thread (process 0 only) that writes each saved step's manifest once orbax has
  committed it; a step is dropped when it never will be (a newer step is already committed, so
  max_to_keep removed this one, or `drain` says the saves are over and it is not there: that save
  failed). An error is kept and raised on the training thread at the next save or close."""

  POLL_S = 0.01

  def __init__(self, directory: str, manifest_dir: str):
    self.directory, self.manifest_dir = directory, manifest_dir
    self.error: BaseException | None = None
    self._queue: queue.Queue = queue.Queue()
    self._saves_over = threading.Event()
    threading.Thread(target=self._run, name="dept_jax-checkpoint-seal", daemon=True).start()

  def submit(self, step: int):
    self._queue.put(step)

  def drain(self):
    """Seal every submitted step; call once orbax has finished writing (wait_until_finished)."""
    self._saves_over.set()
    self._queue.join()
    self._saves_over.clear()

  def _run(self):
    try:  # Linux: a thread's own niceness; hashing yields the cores to training
      os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
      pass
    while True:
      step = self._queue.get()
      try:
        self._seal_when_committed(step)
      except BaseException as e:
        self.error = self.error or e
      finally:
        self._queue.task_done()

  def _seal_when_committed(self, step: int):
    step_dir = os.path.join(self.directory, str(step))
    while not os.path.isdir(step_dir):
      if self._saves_over.is_set() or any(s > step for s in committed_steps(self.directory)):
        return
      time.sleep(self.POLL_S)
    sums = file_checksums(step_dir)
    if sums is not None:
      _write_json_atomically(os.path.join(self.manifest_dir, f"{step}.json"), sums)
    self._drop_manifests_before(step)

  def _drop_manifests_before(self, step: int):
    """Manifests of older steps that max_to_keep has removed."""
    for name in os.listdir(self.manifest_dir):
      s = name.split(".")[0]
      if s.isdigit() and int(s) < step and not os.path.isdir(os.path.join(self.directory, s)):
        os.remove(os.path.join(self.manifest_dir, name))


# ----------------------------------------------------------------------------- the checkpointer


class Checkpointer:
  def __init__(self, workdir: str, ckpt_cfg, *, manifests: bool = True):
    """manifests=False skips sealing (bench/checkpoint_io.py compares the two)."""
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.manifest_dir = os.path.join(self.directory, "manifests")
    self.damaged_dir = os.path.join(self.directory, "damaged")
    self.cfg = ckpt_cfg
    options = ocp.CheckpointManagerOptions(
        max_to_keep=ckpt_cfg.keep if ckpt_cfg.keep > 0 else None,
        keep_period=ckpt_cfg.keep_every if ckpt_cfg.keep_every > 0 else None,
        enable_async_checkpointing=ckpt_cfg.async_save,
        create=True,
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data", "meta"))
    self._primary = jax.process_index() == 0
    self._seals = manifests and self._primary
    self._sealer = None  # started by the first save: a reader needs no thread

  def _manifest(self, step: int) -> str:
    return os.path.join(self.manifest_dir, f"{step}.json")

  # ---------------------------------------------------------------- save
  def save(self, step: int, state, data_state: dict, meta: dict):
    """Starts an async save; the background sealer writes its manifest once it is committed."""
    self._raise_seal_error()
    self._check_space(step, state)
    if self._seals:
      if self._sealer is None:
        os.makedirs(self.manifest_dir, exist_ok=True)
        self._sealer = _Sealer(self.directory, self.manifest_dir)
      if os.path.exists(self._manifest(step)):  # left by a step of this number since set aside
        os.remove(self._manifest(step))
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave(meta)), force=True)
    if self._sealer is not None:
      self._sealer.submit(step)

  def _check_space(self, step: int, state):
    """A save that cannot fit fails here, in one line, before orbax writes anything: the new step
    is written in full before max_to_keep removes an old one. Each process checks the shards it
    writes (one copy of each)."""
    need = sum(int(sh.data.nbytes) for x in jax.tree.leaves(state)
               for sh in x.addressable_shards if sh.replica_id == 0)
    free = shutil.disk_usage(self.directory).free
    if free < need:
      raise CheckpointError(
          f"no space for the checkpoint at step {step} in {self.directory}: it needs about "
          f"{need / 1e6:,.0f} MB and {free / 1e6:,.0f} MB are free. Fix: free space on that disk "
          "(or lower checkpoint.keep), or use a --workdir on another disk; then run the same "
          "command again (training resumes from its last complete checkpoint).")

  def wait_until_sealed(self):
    """Block until every save is written and sealed (the end of a run)."""
    self.manager.wait_until_finished()
    if self._sealer is not None:
      self._sealer.drain()
    self._raise_seal_error()

  def _raise_seal_error(self):
    if self._sealer is not None and self._sealer.error is not None:
      e, self._sealer.error = self._sealer.error, None
      raise e

  def close(self):
    self.wait_until_sealed()
    self.manager.close()

  # ---------------------------------------------------------------- restore
  def all_steps(self) -> list[int]:
    self.manager.reload()
    return sorted(self.manager.all_steps())

  def latest_step(self):
    steps = self.all_steps()
    return steps[-1] if steps else None

  def verify(self, step: int) -> bool:
    """Raise CheckpointError naming the first file whose bytes changed since the save. Returns
    False when the step has no manifest (killed before it was sealed): nothing to compare."""
    path = self._manifest(step)
    if not os.path.exists(path):
      return False
    with open(path) as f:
      manifest = json.load(f)
    step_dir = os.path.join(self.directory, str(step))
    for rel, digest in manifest.items():
      full = os.path.join(step_dir, rel)
      if not os.path.exists(full):
        raise CheckpointError(self._damage(step, full, "is missing"))
      if sha256_of(full) != digest:
        raise CheckpointError(self._damage(step, full, "does not match its checksum"))
    return True

  def _damage(self, step, what, how):
    return (f"checkpoint at step {step} is damaged: {what} {how}. {_FALLBACK_FIX}, or move "
            f"{os.path.join(self.directory, str(step))} away yourself.")

  def restore(self, abstract_state, step: int | None = None, *, set_aside_damaged: bool = False):
    """(step, state, data_state, meta) from `step` (default: the latest complete one).

    With checkpoint.fallback, a damaged checkpoint is reported and the next older one is tried;
    with set_aside_damaged (the training run) damaged steps are moved to checkpoints/damaged/, so
    the run can save those step numbers again.
    """
    steps = self.all_steps()
    if not steps:
      raise CheckpointError(f"no checkpoint in {self.directory}. Fix: train first, or point "
                            "--workdir at a run that saved checkpoints.")
    if step is not None and step not in steps:
      raise CheckpointError(f"no checkpoint at step {step} in {self.directory}; saved steps: "
                            f"{steps}. Fix: pass one of those.")
    candidates = [step] if step is not None else list(reversed(steps))
    errors = []
    for s in candidates:
      try:
        sealed = self.verify(s)
        restored = self.manager.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
        bad = nonfinite_leaves(restored["state"])
        if bad:
          raise CheckpointError(self._damage(
              s, f"{len(bad)} arrays ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})",
              "hold NaN or inf, and a saved state is always finite"))
      except CheckpointError as e:
        errors.append(str(e))
      except Exception as e:  # orbax/tensorstore read failures: name the step and the cause
        errors.append(f"checkpoint at step {s} in {self.directory} cannot be read: "
                      f"{type(e).__name__}: {str(e)[:500]}. {_FALLBACK_FIX}.")
      else:
        if not sealed:
          _say(f"step {s} has no checksum manifest (the run stopped before it was sealed): "
               "checked only that it reads and that every number is finite")
        if errors:
          _say(f"fell back to step {s} after: {errors[-1].split(' Fix:')[0]}")
        return s, restored["state"], restored["data"], restored["meta"]
      if not self.cfg.fallback:
        raise CheckpointError(errors[-1])
      if set_aside_damaged:
        _say(f"moved the damaged step {s} to {self.set_aside(s)}")
    raise CheckpointError("no checkpoint could be restored:\n" + "\n".join(errors))

  def set_aside(self, step: int) -> str:
    """Move a step (with its manifest, as <dest>.json) to checkpoints/damaged/<step>[.n]; returns
    the new path. Process 0 moves, every process waits for it."""
    n, dest = 0, os.path.join(self.damaged_dir, str(step))
    while os.path.exists(dest):
      n += 1
      dest = os.path.join(self.damaged_dir, f"{step}.{n}")
    if self._primary:
      os.makedirs(self.damaged_dir, exist_ok=True)
      os.replace(os.path.join(self.directory, str(step)), dest)
      if os.path.exists(self._manifest(step)):
        os.replace(self._manifest(step), dest + ".json")
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"dept_jax set aside {step}")
    self.manager.reload()
    return dest


def _say(line: str):
  if jax.process_index() == 0:
    print(f"[checkpoint] {line}", flush=True)
