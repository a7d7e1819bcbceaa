"""Means over seeds and paired differences between arms, with a t confidence interval."""
from __future__ import annotations

import math

import numpy as np


def mean_std(values) -> dict:
  """Mean and sample standard deviation (0 for one value); n counts the values."""
  x = np.asarray([v for v in values if v is not None], np.float64)
  if not len(x):
    return {"n": 0, "mean": None, "std": None}
  return {"n": int(len(x)), "mean": float(x.mean()),
          "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0}


def paired_difference(arm: dict, reference: dict, level: float = 0.95) -> dict:
  """arm - reference over the seeds both have ({seed: value}): the mean difference, its t
  interval at `level` (None with fewer than two pairs) and the relative change of the mean."""
  seeds = sorted(s for s in arm if s in reference and arm[s] is not None
                 and reference[s] is not None)
  d = np.asarray([arm[s] - reference[s] for s in seeds], np.float64)
  out = {"n": len(seeds), "seeds": seeds, "mean": None, "ci_low": None, "ci_high": None,
         "relative": None}
  if not len(d):
    return out
  out["mean"] = float(d.mean())
  ref_mean = float(np.mean([reference[s] for s in seeds]))
  out["relative"] = out["mean"] / ref_mean if ref_mean else None
  if len(d) > 1:
    from scipy import stats
    half = stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    out["ci_low"], out["ci_high"] = out["mean"] - half, out["mean"] + half
  return out


def verdict(diff: dict) -> str:
  """'lower' / 'higher' when the interval excludes zero, else 'no clear difference'."""
  if diff["ci_low"] is None:
    return "too few seeds to tell"
  if diff["ci_high"] < 0:
    return "lower"
  if diff["ci_low"] > 0:
    return "higher"
  return "no clear difference"
