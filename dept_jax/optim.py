"""Inner (per-source AdamW) and outer (FedAvg / Nesterov) optimizers, and the learning-rate schedule.

The inner optimizer's learning rate is applied outside optax, from the global local-step counter,
so that resetting AdamW's moments at a round boundary does not restart the schedule.
"""
from __future__ import annotations

import jax.numpy as jnp
import optax


def lr_schedule(optim_cfg, total_steps: int):
  """Linear warmup to the peak, then cosine down to final_lr_frac * peak at total_steps."""
  peak = optim_cfg.lr
  warmup = max(int(optim_cfg.warmup_steps), 0)
  decay = max(total_steps - warmup, 1)
  cosine = optax.cosine_decay_schedule(peak, decay, alpha=optim_cfg.final_lr_frac)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak * (step + 1) / max(warmup, 1)
    return jnp.where(step < warmup, warm, cosine(step - warmup))
  return schedule


def inner_transform(optim_cfg) -> optax.GradientTransformation:
  """AdamW direction without the learning rate (multiplied in by the step)."""
  parts = []
  if optim_cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(optim_cfg.grad_clip))
  parts.append(optax.scale_by_adam(b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps))
  if optim_cfg.weight_decay > 0:
    parts.append(optax.add_decayed_weights(optim_cfg.weight_decay))
  return optax.chain(*parts)


def outer_transform(outer_cfg) -> optax.GradientTransformation:
  """Applied to the pseudo-gradient mean_k(theta_global - theta_k).

  FedAvg is SGD with lr 1 and no momentum: the new global equals the mean of the local models.
  """
  if outer_cfg.optimizer == "fedavg":
    return optax.sgd(1.0)
  return optax.sgd(outer_cfg.lr, momentum=outer_cfg.momentum, nesterov=True)
