"""A PNG of every source's training and validation curves, from WORKDIR/metrics.jsonl."""
from __future__ import annotations

import json
import os


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found. Fix: point --workdir at a training run.")
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def plot(workdir: str) -> str:
  import jax
  if jax.process_index() != 0:
    return ""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = read_metrics(workdir)
  panels = [("train/", "/loss", "training loss (own tokens)"),
            ("eval/", "/loss", "validation loss (own tokens)"),
            ("eval/", "/bits_per_byte", "validation bits per byte")]
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
  for ax, (prefix, suffix, title) in zip(axes, panels):
    names = sorted({k[len(prefix):-len(suffix)] for r in rows for k in r
                    if k.startswith(prefix) and k.endswith(suffix) and k.count("/") == 2})
    for name in names:
      key = f"{prefix}{name}{suffix}"
      pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
      if pts:
        ax.plot(*zip(*pts), label=name, marker="." if len(pts) < 30 else None)
    ax.set_title(title)
    ax.set_xlabel("local step")
    if names:
      ax.legend(fontsize=8)
  fig.tight_layout()
  out = os.path.join(workdir, "curves.png")
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out
