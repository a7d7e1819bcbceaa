"""Checkpoints that always restore: orbax async saves of the whole state, the data streams' positions
and the run's metadata, plus a checksum manifest per step so damage is caught and named.

Layout: WORKDIR/checkpoints/<step>/{state,data,meta} (orbax) and
WORKDIR/checkpoints/manifests/<step>.json (sha256 of every file, written once the save is final).
"""
from __future__ import annotations

import hashlib
import json
import os

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used; the message names the step, the file and the fix."""


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _files_under(root: str) -> list[str]:
  out = []
  for dirpath, _, files in os.walk(root):
    for name in files:
      out.append(os.path.relpath(os.path.join(dirpath, name), root))
  return sorted(out)


class Checkpointer:
  def __init__(self, workdir: str, ckpt_cfg):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.manifest_dir = os.path.join(self.directory, "manifests")
    self.cfg = ckpt_cfg
    options = ocp.CheckpointManagerOptions(
        max_to_keep=ckpt_cfg.keep if ckpt_cfg.keep > 0 else None,
        keep_period=ckpt_cfg.keep_every if ckpt_cfg.keep_every > 0 else None,
        enable_async_checkpointing=ckpt_cfg.async_save,
        create=True,
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data", "meta"))
    self._unsealed: list[int] = []
    self._primary = jax.process_index() == 0
    if self._primary:
      os.makedirs(self.manifest_dir, exist_ok=True)

  # ---------------------------------------------------------------- save
  def save(self, step: int, state, data_state: dict, meta: dict):
    """Starts an async save; the previous one is sealed (manifest written) first."""
    self.seal()
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave(meta)), force=True)
    self._unsealed.append(step)

  def seal(self):
    """Wait for in-flight saves, then record checksums of their files."""
    self.manager.wait_until_finished()
    if self._primary:
      for step in self._unsealed:
        step_dir = os.path.join(self.directory, str(step))
        if not os.path.isdir(step_dir):
          continue  # already garbage-collected by max_to_keep
        manifest = {rel: _sha256(os.path.join(step_dir, rel)) for rel in _files_under(step_dir)}
        tmp = os.path.join(self.manifest_dir, f"{step}.json.tmp")
        with open(tmp, "w") as f:
          json.dump(manifest, f)
        os.replace(tmp, os.path.join(self.manifest_dir, f"{step}.json"))
    self._unsealed = []

  def close(self):
    self.seal()
    self.manager.close()

  # ---------------------------------------------------------------- restore
  def all_steps(self) -> list[int]:
    self.manager.reload()
    return sorted(self.manager.all_steps())

  def latest_step(self):
    steps = self.all_steps()
    return steps[-1] if steps else None

  def verify(self, step: int):
    """Raise CheckpointError naming the first file whose bytes changed since the save."""
    path = os.path.join(self.manifest_dir, f"{step}.json")
    if not os.path.exists(path):
      return  # saved but killed before sealing: orbax had finalized it, nothing to compare
    with open(path) as f:
      manifest = json.load(f)
    step_dir = os.path.join(self.directory, str(step))
    for rel, digest in manifest.items():
      full = os.path.join(step_dir, rel)
      if not os.path.exists(full):
        raise CheckpointError(self._damage(step, full, "is missing"))
      if _sha256(full) != digest:
        raise CheckpointError(self._damage(step, full, "does not match its checksum"))

  def _damage(self, step, path, what):
    return (f"checkpoint at step {step} is corrupted: {path} {what}. Fix: rerun with "
            f"--config.checkpoint.fallback=True to resume from the previous good checkpoint, "
            f"or delete {os.path.join(self.directory, str(step))}.")

  def restore(self, abstract_state, step: int | None = None):
    """(step, state, data_state, meta) from `step` (default: the latest complete one).

    With checkpoint.fallback, a damaged checkpoint is reported and the next older one is tried.
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
        self.verify(s)
        restored = self.manager.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
        if errors:
          print(f"[checkpoint] fell back to step {s} after: {errors[-1]}", flush=True)
        return s, restored["state"], restored["data"], restored["meta"]
      except CheckpointError as e:
        errors.append(str(e))
      except Exception as e:  # orbax/tensorstore read failures: name the step and the cause
        errors.append(f"checkpoint at step {s} in {self.directory} cannot be read: "
                      f"{type(e).__name__}: {str(e)[:500]}. Fix: rerun with "
                      "--config.checkpoint.fallback=True to use the previous good one.")
      if not self.cfg.fallback:
        raise CheckpointError(errors[-1])
    raise CheckpointError("no checkpoint could be restored:\n" + "\n".join(errors))
