"""What ties a workdir to one training run: a writer lock and the config the run was started with.

Lock: WORKDIR/run.lock, held with fcntl.flock by process 0 for as long as `train` runs. The kernel
drops it when the process exits or dies (SIGKILL included), so a crash never leaves a stale lock;
a second run on the same workdir refuses at once, naming the holder. On a filesystem without
locks (some FUSE mounts) the run warns and goes on unguarded.

Config: once a workdir holds a checkpoint, resuming it with another variant, model, data or any
other setting that shapes or defines the saved state refuses, naming the differing keys, and
leaves config.json as it was. Settings that only steer how the run goes on may change:
RESUMABLE_KEYS below. Those changes are applied, written to config.json and recorded in
WORKDIR/config_history.jsonl, so the record says which settings every part of the run used.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time

import jax
import numpy as np

from dept_jax.config_lib import ConfigError

LOCK_NAME = "run.lock"

# Keys (and groups: every key below them) a resumed run may change. steps: extend the run (the
# schedule follows the new length). optim.lr / warmup_steps / grad_clip: what the non-finite-loss
# error tells users to change. The rest changes speed, devices, logging, evaluation or
# checkpointing, never the saved state's shapes or meaning: data.cache_dir may move, data.workers,
# read_threads and prefetch only set speed (data.eval_batches may not: a run keeps the held-out
# text it started with, so its evaluations stay comparable). init_from only acts on a fresh start.
RESUMABLE_KEYS = ("steps", "optim.lr", "optim.warmup_steps", "optim.grad_clip", "on_nonfinite",
                  "local_slots", "model.dtype", "model.remat", "model.attention",
                  "model.scan_layers", "data.cache_dir", "data.workers", "data.read_threads",
                  "data.prefetch", "init_from", "mesh", "log", "eval", "checkpoint")


class WorkdirError(RuntimeError):
  """The workdir cannot be used by this run; the message names the holder and the fix."""


# ----------------------------------------------------------------------------- lock


def _holder(path: str) -> str:
  try:
    with open(path) as f:
      h = json.load(f)
    return f"pid {h['pid']} on {h['host']}, started {h['started']}"
  except (OSError, ValueError, KeyError):
    return "holder unknown"


def _lock(workdir: str):
  """An open descriptor holding the workdir's lock, or None where the filesystem has no locks."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_NAME)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    raise WorkdirError(
        f"{os.path.abspath(workdir)} is in use by another training run ({_holder(path)}): two "
        "runs would interleave checkpoints and metrics. Fix: wait for that run to end or stop "
        "it, or pass another --workdir.") from None
  except OSError as e:
    if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
      raise
    os.close(fd)
    print(f"[dept_jax] warning: {workdir}'s filesystem does not support locks ({e.strerror}); "
          "nothing stops a second run from writing into it.", file=sys.stderr, flush=True)
    return None
  os.ftruncate(fd, 0)
  os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
  return fd


@contextlib.contextmanager
def exclusive(workdir: str):
  """Hold the workdir's writer lock for the block. With several processes, process 0 locks (the
  one that writes metrics and config) and tells the others, so every process of a second launch
  refuses alike."""
  fd, problem = None, None
  if jax.process_index() == 0:
    try:
      fd = _lock(workdir)
    except WorkdirError as e:
      problem = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    busy = int(multihost_utils.broadcast_one_to_all(np.int32(problem is not None)))
    if busy and problem is None:
      problem = WorkdirError(f"{workdir} is in use by another training run (process 0 could not "
                             "lock it). Fix: wait for that run to end, or pass another --workdir.")
  if problem is not None:
    raise problem
  try:
    yield
  finally:
    if fd is not None:
      os.close(fd)  # releases the lock


# ----------------------------------------------------------------------------- config


def _flat(tree, prefix: str = "") -> dict:
  out = {}
  for k, v in tree.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flat(v, key + "."))
    else:
      out[key] = v
  return out


def resumable(key: str) -> bool:
  return any(key == r or key.startswith(r + ".") for r in RESUMABLE_KEYS)


def changed_settings(saved: dict, now: dict) -> dict:
  """{dotted key: (saved value, new value)}; a key missing on one side shows as '<absent>'."""
  a, b = _flat(saved), _flat(now)
  return {k: (a.get(k, "<absent>"), b.get(k, "<absent>"))
          for k in sorted(set(a) | set(b)) if a.get(k, "<absent>") != b.get(k, "<absent>")}


def has_checkpoint(workdir: str) -> bool:
  from dept_jax.checkpoint import committed_steps
  return bool(committed_steps(os.path.join(workdir, "checkpoints")))


def _short(v) -> str:
  s = json.dumps(v) if not isinstance(v, str) else v
  return s if len(s) <= 40 else s[:37] + "..."


def bind_config(config, workdir: str) -> dict:
  """Refuse a config that does not match the run already in workdir; otherwise write config.json
  (process 0). Returns the resumable settings that changed ({} for a new run)."""
  now = json.loads(config.to_json_best_effort())
  path = os.path.join(workdir, "config.json")
  changed = {}
  if os.path.exists(path) and has_checkpoint(workdir):
    with open(path) as f:
      saved = json.load(f)
    changed = changed_settings(saved, now)
    bound = [k for k in changed if not resumable(k)]
    if bound:
      shown = "; ".join(f"{k}: {_short(changed[k][0])} -> {_short(changed[k][1])}"
                        for k in bound[:6])
      more = f"; and {len(bound) - 6} more" if len(bound) > 6 else ""
      raise ConfigError(
          f"config: {workdir} holds a run trained with other settings ({shown}{more}); resuming "
          "it with these would mix two runs. Fix: pass a new --workdir for these settings, or "
          "restore them to resume this run.")
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    if changed:
      with open(os.path.join(workdir, "config_history.jsonl"), "a") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%d %H:%M:%S"),
                            "changed": {k: list(v) for k, v in changed.items()}}) + "\n")
      print("[dept_jax] resuming with changed settings: " + "; ".join(
          f"{k}: {_short(a)} -> {_short(b)}" for k, (a, b) in changed.items()), flush=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.write(config.to_json_best_effort(indent=2))
    os.replace(tmp, path)
  return changed
