"""Runs cells: each in its own process (python -m dept_jax.study.cell), one at a time, or side by
side on disjoint accelerators (study.devices_per_cell); or inside this process (isolate=False).

A cell stage that has its marker file is never started again. SIGTERM/SIGINT reaches every running
cell, which saves a checkpoint and exits; nothing new starts, and the same command resumes.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

from dept_jax.study.cell import INTERRUPTED, finished_stages, run_cell
from dept_jax.study.grid import StudyError


@dataclasses.dataclass
class Task:
  cell_dir: str
  stages: tuple  # which stages this phase needs ("train", "ood")
  label: str

  def pending(self) -> tuple:
    done = finished_stages(self.cell_dir)
    return tuple(s for s in self.stages if s not in done)


def discover_devices() -> tuple[str, int]:
  """(platform, device count) from a throwaway process: this one never touches an accelerator
  (on GPU it would reserve most of its memory)."""
  out = subprocess.run([sys.executable, "-c", "import jax; d = jax.devices(); "
                        "print(d[0].platform, len(d))"], capture_output=True, text=True, check=True)
  platform, count = out.stdout.split()[-2:]
  return platform, int(count)


def device_groups(count: int, per_cell: int) -> list[tuple[int, ...]]:
  """Disjoint device subsets, per_cell devices each (0: one group of every device)."""
  if per_cell <= 0 or per_cell >= count:
    return [tuple(range(count))]
  return [tuple(range(i, i + per_cell)) for i in range(0, count - per_cell + 1, per_cell)]


# Chips per process -> libtpu's TPU_CHIPS_PER_PROCESS_BOUNDS for one process on a subset of a host.
_TPU_BOUNDS = {1: "1,1,1", 2: "1,2,1", 4: "2,2,1"}


def device_env(platform: str, ids: tuple, slot: int) -> dict:
  """Environment that shows a cell only its devices. CPU cells see every (host) device."""
  if platform == "cpu":
    return {}
  joined = ",".join(map(str, ids))
  if platform in ("gpu", "cuda", "rocm"):
    return {"CUDA_VISIBLE_DEVICES": joined, "HIP_VISIBLE_DEVICES": joined}
  if platform == "tpu":
    if len(ids) not in _TPU_BOUNDS:
      raise StudyError(f"config.study.devices_per_cell: {len(ids)} TPU chips per cell is not a "
                       f"shape one host can split into. Fix: use one of {sorted(_TPU_BOUNDS)}.")
    port = 8476 + slot  # every process on the host needs its own controller port
    return {"TPU_CHIPS_PER_PROCESS_BOUNDS": _TPU_BOUNDS[len(ids)], "TPU_PROCESS_BOUNDS": "1,1,1",
            "TPU_VISIBLE_CHIPS": joined, "TPU_VISIBLE_DEVICES": joined,
            "TPU_MESH_CONTROLLER_ADDRESS": f"localhost:{port}",
            "TPU_MESH_CONTROLLER_PORT": str(port)}
  raise StudyError(f"config.study.devices_per_cell: no way known to split '{platform}' devices "
                   "between processes. Fix: set devices_per_cell=0 (one cell at a time).")


def _say(msg: str):
  print(f"[study] {msg}", flush=True)


def run_in_process(tasks: list[Task]):
  """One after another in this process (a crash raises here); the training loop itself turns
  SIGTERM/SIGINT into a checkpoint and a return."""
  for t in tasks:
    stages = t.pending()
    if stages:
      _say(f"{t.label}: {'+'.join(stages)}")
      if run_cell(t.cell_dir, stages) == INTERRUPTED:
        raise KeyboardInterrupt


class _Stop:
  """Forward SIGTERM/SIGINT to the running cells and start nothing new."""

  def __init__(self, running):
    self.running, self.stopped, self._old = running, False, {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread
        pass
    return self

  def _handle(self, signum, frame):
    self.stopped = True
    for proc, _, _ in self.running:
      if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def run_isolated(tasks: list[Task], platform: str, groups: list[tuple]):
  """Each pending task in a child process on a free device group. Raises StudyError naming the
  cells that crashed (their logs hold the error), KeyboardInterrupt when stopped by a signal."""
  todo = [t for t in tasks if t.pending()]
  free = list(range(len(groups)))
  running, failed = [], []
  with _Stop(running) as stop:
    while todo or running:
      while todo and free and not stop.stopped:
        t, g = todo.pop(0), free.pop(0)
        stages = t.pending()
        env = dict(os.environ)
        if len(groups) > 1:
          env.update(device_env(platform, groups[g], g))
        log = open(os.path.join(t.cell_dir, "log.txt"), "a")
        proc = subprocess.Popen([sys.executable, "-m", "dept_jax.study.cell", t.cell_dir,
                                 "--stages", ",".join(stages)], stdout=log,
                                stderr=subprocess.STDOUT, env=env)
        log.close()
        where = f" on devices {','.join(map(str, groups[g]))}" if len(groups) > 1 else ""
        _say(f"{t.label}: {'+'.join(stages)} started{where}")
        running.append((proc, t, g))
      time.sleep(0.2)
      for item in list(running):
        proc, t, g = item
        if proc.poll() is None:
          continue
        running.remove(item)
        free.append(g)
        if proc.returncode == INTERRUPTED:
          _say(f"{t.label}: interrupted, checkpoint saved")
        elif proc.returncode:
          failed.append(t.cell_dir)
          _say(f"{t.label}: FAILED (exit {proc.returncode}); see {t.cell_dir}/log.txt")
        else:
          _say(f"{t.label}: finished")
      if stop.stopped and not running:
        raise KeyboardInterrupt
  if failed:
    raise StudyError(f"{len(failed)} cell(s) failed: "
                     + ", ".join(f"{d}/log.txt" for d in failed)
                     + ". Fix: read the log; run the same command again to resume them.")
