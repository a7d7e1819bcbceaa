"""Where a run's numbers go: DIR/metrics.jsonl, TensorBoard events (tensorboardX, no TensorFlow),
optionally a Weights & Biases run (config.log.wandb), and a console progress bar with ETA. Only
process 0 writes."""
from __future__ import annotations

import json
import math
import os
import sys
import time

import jax


def is_writer() -> bool:
  return jax.process_index() == 0


class MetricsWriter:
  def __init__(self, workdir: str, total_steps: int, start_step: int = 0, *, tensorboard=True,
               progress=True, config=None):
    """config: the run's resolved config; with config.log.wandb set it also starts a W&B run."""
    self.enabled = is_writer()
    self.total, self.start = total_steps, start_step
    self._jsonl = self._tb = self._bar = self._wandb = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "metrics.jsonl")
    _drop_rows_after(path, start_step)  # a resumed run rewrites the steps it replays
    self._jsonl = open(path, "a", buffering=1)
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(logdir=workdir, flush_secs=10)
    if config is not None and config.log.get("wandb", ""):
      from dept_jax import wandb_log
      self._wandb = wandb_log.start(workdir, config)
    if progress:
      from tqdm import tqdm
      self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                       file=sys.stdout, mininterval=0.5, smoothing=0.1)

  def write(self, step: int, metrics: dict):
    if not self.enabled:
      return
    clean = {k: _plain(v) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")
    if self._tb is not None:
      for k, v in clean.items():
        if isinstance(v, (int, float)) and math.isfinite(v):
          self._tb.add_scalar(k, v, step)
    if self._wandb is not None:
      self._wandb.log(step, clean)

  def advance(self, steps: int = 1, postfix: str | None = None):
    if self._bar is not None:
      self._bar.update(steps)
      if postfix:
        self._bar.set_postfix_str(postfix, refresh=False)

  def console(self, line: str):
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(line)
    else:
      print(line, flush=True)

  def close(self):
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.close()
    if self._tb is not None:
      self._tb.close()
    if self._wandb is not None:
      self._wandb.finish()
    self._jsonl.close()


def _drop_rows_after(path: str, step: int):
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [l for l in f if l.strip()]
  keep = [l for l in lines if json.loads(l).get("step", 0) <= step]
  if len(keep) != len(lines):
    with open(path + ".tmp", "w") as f:
      f.writelines(keep)
    os.replace(path + ".tmp", path)


def _plain(v):
  if hasattr(v, "item"):
    v = v.item()
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)
  return v


class StepTimer:
  """Steps per second over a logged interval (the first interval includes compiling)."""

  def __init__(self):
    self.t0, self.steps = time.perf_counter(), 0

  def tick(self, n=1):
    self.steps += n

  def rate(self):
    dt = time.perf_counter() - self.t0
    steps, self.t0, self.steps = self.steps, time.perf_counter(), 0
    return steps / dt if dt > 0 else float("nan")
