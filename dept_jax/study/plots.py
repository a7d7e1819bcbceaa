"""The study's two figures: validation curves per arm (one panel per source, mean over seeds
against training tokens), and final bits per byte per source (bars, +- std over seeds)."""
from __future__ import annotations

import os

import numpy as np


def _mean_curve(recs: list[dict], source: str):
  """(tokens, mean, std) over the seeds, at the evaluations every seed has."""
  curves = [[(p["tokens"], p["bpb"][source]) for p in r["curve"] if source in p["bpb"]]
            for r in recs if r["status"] == "done"]
  n = min((len(c) for c in curves), default=0)
  if not n:
    return None
  pts = np.asarray([c[:n] for c in curves], np.float64)  # [seeds, evals, (tokens, bpb)]
  return pts[..., 0].mean(0), pts[..., 1].mean(0), pts[..., 1].std(0)


def plot(main: dict, summary: dict, folder: str) -> list[str]:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  sources = summary["study"]["sources"]
  cols = min(3, len(sources))
  rows = -(-len(sources) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
  for ax, source in zip(axes.flat, sources):
    for name, recs in main.items():
      got = _mean_curve(recs, source)
      if got is not None:
        x, m, s = got
        line, = ax.plot(x, m, label=name, marker="." if len(x) < 30 else None)
        ax.fill_between(x, m - s, m + s, color=line.get_color(), alpha=0.15)
    ax.set_title(f"{source}: validation bits per byte")
    ax.set_xlabel("training tokens (all sources)")
  for ax in list(axes.flat)[len(sources):]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=7)
  fig.tight_layout()
  curves = os.path.join(folder, "curves.png")
  fig.savefig(curves, dpi=100)
  plt.close(fig)

  hold = summary["study"].get("holdout")
  groups = sources + ([f"{hold} (OOD)"] if hold else [])
  arms = summary["arms"]
  width = 0.8 / max(len(arms), 1)
  fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(groups) * max(1, len(arms) / 3)), 4.5))
  for i, a in enumerate(arms):
    stats = [a["bpb"][s] for s in sources] + ([a["ood_bpb"]] if hold else [])
    mean = [np.nan if m["mean"] is None else m["mean"] for m in stats]
    std = [0 if m["std"] is None else m["std"] for m in stats]
    ax.bar(np.arange(len(groups)) + (i - (len(arms) - 1) / 2) * width, mean, width, yerr=std,
           label=a["arm"], capsize=2)
  ax.set_xticks(np.arange(len(groups)), groups, rotation=20)
  ax.set_ylabel("final validation bits per byte")
  ax.legend(fontsize=7)
  fig.tight_layout()
  bars = os.path.join(folder, "final_bpb.png")
  fig.savefig(bars, dpi=100)
  plt.close(fig)
  return [curves, bars]
