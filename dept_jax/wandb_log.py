"""Optional Weights & Biases logging beside TensorBoard: config.log.wandb = "offline" (a local run
under WORKDIR/wandb/, no network; `wandb sync` uploads it later) or "online".

The run's config is the resolved config (every default and override), its group is
config.log.wandb_group (a study sets one group for all its cells) and its id is derived from the
workdir, so a resumed training run continues the same W&B run. W&B refuses steps lower than one it
already has: after a resume, the steps replayed since the checkpoint are kept from the first pass.
"""
from __future__ import annotations

import hashlib
import json
import os

MODES = ("", "offline", "online")


def check(log_cfg) -> None:
  """Before any heavy work: a known mode, and the package present when it is needed."""
  from dept_jax.config_lib import ConfigError
  mode = log_cfg.get("wandb", "")
  if mode not in MODES:
    raise ConfigError(f"config.log.wandb: unknown mode '{mode}'. Fix: use '' (off), 'offline' "
                      "or 'online'.")
  if mode:
    import importlib.util
    if importlib.util.find_spec("wandb") is None:
      raise ConfigError("config.log.wandb: the wandb package is not installed. Fix: pip install "
                        "'dept_jax[wandb]', or set log.wandb=''.")


def run_id(workdir: str) -> str:
  return hashlib.sha1(os.path.abspath(workdir).encode()).hexdigest()[:16]


class WandbRun:
  def __init__(self, run):
    self.run = run

  def log(self, step: int, metrics: dict):
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    if numbers:
      self.run.log(numbers, step=step)

  def finish(self):
    self.run.finish()


def start(workdir: str, config) -> WandbRun:
  import wandb
  log = config.log
  run = wandb.init(
      project=log.get("wandb_project", "") or "dept_jax",
      group=log.get("wandb_group", "") or None,
      name=log.get("wandb_name", "") or os.path.basename(os.path.abspath(workdir)),
      config=json.loads(config.to_json_best_effort()),
      dir=workdir, mode=log.wandb, id=run_id(workdir), resume="allow",
      settings=wandb.Settings(console="off", quiet=True))
  return WandbRun(run)
