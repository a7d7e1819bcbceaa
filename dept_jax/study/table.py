"""The study's table: per arm, bits per byte per source (mean +- std over seeds), the held-out
source after adaptation, tokens seen, wall time and communication, and the difference against the
reference STD arm paired on matching seeds. Written as results.md, results.json and cells.csv."""
from __future__ import annotations

import csv
import json
import os

from dept_jax.study import stats

# Columns of cells.csv (one row per cell); per-source values follow them.
CELL_COLUMNS = ("cell", "arm", "variant", "seed", "lr", "status", "steps", "mean_bpb",
                "ood_bpb", "wall_s", "cpu_s", "comm_bytes")


def _ood_bpb(rec):
  ood = rec.get("ood") or {}
  return ood.get("bits_per_byte") if ood.get("status") == "done" else None


def arm_summary(name: str, recs: list[dict], sources: list[str]) -> dict:
  ok = [r for r in recs if r["status"] == "done"]
  ood_wall = [(r.get("ood") or {}).get("wall_s") for r in ok]
  return {
      "arm": name, "variant": recs[0]["variant"], "lr": recs[0]["lr"],
      "seeds": [r["seed"] for r in ok], "diverged": [r["seed"] for r in recs if r not in ok],
      "bpb": {s: stats.mean_std(r["bpb"].get(s) for r in ok) for s in sources},
      "mean_bpb": stats.mean_std(r["mean_bpb"] for r in ok),
      "ood_bpb": stats.mean_std(_ood_bpb(r) for r in ok),
      "tokens": {s: stats.mean_std(r["tokens"].get(s, 0) for r in ok)["mean"] for s in sources},
      "wall_s": stats.mean_std(r["wall_s"] for r in ok),
      "cpu_s": stats.mean_std(r.get("cpu_s") for r in ok),
      "ood_wall_s": stats.mean_std(ood_wall),
      "comm_bytes": stats.mean_std(r["comm_bytes"] for r in ok)["mean"],
      "by_seed": {"mean": {r["seed"]: r["mean_bpb"] for r in ok},
                  "ood": {r["seed"]: _ood_bpb(r) for r in ok},
                  **{s: {r["seed"]: r["bpb"].get(s) for r in ok} for s in sources}},
  }


def reference_arm(arms: list[dict], named: str, std_names: set) -> dict | None:
  """The named baseline, else the STD arm with the lowest mean bits per byte."""
  if named:
    return next(a for a in arms if a["arm"] == named)
  std = [a for a in arms if a["arm"] in std_names and a["mean_bpb"]["mean"] is not None]
  return min(std, key=lambda a: a["mean_bpb"]["mean"]) if std else None


def summarize(main: dict, sweep: list[dict], info: dict) -> dict:
  """main: {arm name: [cell records]}; sweep: records of the learning-rate sweep; info: the
  study's settings (sources, holdout, budget, baseline, std arm names, ...)."""
  sources = info["sources"]
  arms = [arm_summary(name, recs, sources) for name, recs in main.items()]
  ref = reference_arm(arms, info.get("baseline", ""), set(info["std_arms"]))
  for a in arms:
    a["vs_reference"] = None if ref is None else {
        key: stats.paired_difference(a["by_seed"][key], ref["by_seed"][key])
        for key in ("mean", "ood", *sources)}
  return {"study": {**info, "reference": ref["arm"] if ref else None}, "arms": arms,
          "sweep": [{k: r[k] for k in ("arm", "lr", "seed", "status", "mean_bpb",
                                       "train_loss_first", "train_loss_last", "picked", "stable")}
                    for r in sweep],
          "cells": [{k: v for k, v in r.items() if k != "curve"}
                    for recs in main.values() for r in recs]}


# ------------------------------------------------------------------ formatting
def _num(x, digits=3):
  return "-" if x is None else f"{x:.{digits}f}"


def _pm(m):
  if m["mean"] is None:
    return "-"
  return f"{m['mean']:.3f} ± {m['std']:.3f}" if m["n"] > 1 else f"{m['mean']:.3f}"


def _diff(d):
  if d == "reference":
    return "(reference)"
  if d is None or d["mean"] is None:
    return "-"
  ci = f" [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]" if d["ci_low"] is not None else ""
  return f"{d['mean']:+.3f}{ci}"


def _pct(d):
  if d == "reference" or d is None or d["relative"] is None:
    return "-"
  return f"{100 * d['relative']:+.1f}%"


def _bytes(n):
  if n is None:
    return "-"
  for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
    if n >= size:
      return f"{n / size:.1f} {unit}"
  return f"{n} B"


def _vs(arm, ref) -> dict:
  """The arm's differences by key; the reference arm's row says so instead of +0.000."""
  if arm["arm"] == ref:
    return {k: "reference" for k in arm["vs_reference"]}
  return arm["vs_reference"] or {}


def _row(cells):
  return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header, rows):
  return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)]


def verdict_lines(summary: dict) -> list[str]:
  ref = summary["study"]["reference"]
  out = []
  for a in summary["arms"]:
    if a["arm"] == ref or a["vs_reference"] is None:
      continue
    parts = []
    for key, what in (("mean", "bits per byte, mean of sources"),
                      ("ood", f"held-out {summary['study'].get('holdout')}")):
      d = a["vs_reference"][key]
      if d["mean"] is None:
        continue
      v = stats.verdict(d)
      if v in ("lower", "higher"):
        parts.append(f"{abs(d['mean']):.3f} {v} than {ref} on {what} ({_pct(d)}, 95% CI "
                     f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}], {d['n']} seeds)")
      else:
        parts.append(f"{v} from {ref} on {what} ({_diff(d)}, {d['n']} seeds)")
    if parts:
      out.append(f"- **{a['arm']}**: " + "; ".join(parts) + ".")
  return out


def markdown(summary: dict) -> str:
  st, arms = summary["study"], summary["arms"]
  sources, ref, hold = st["sources"], st["reference"], st.get("holdout")
  lines = [f"# Study: {st['name']}", "",
           f"Every cell trained on {st['token_budget']:,} tokens; sources: {', '.join(sources)}; "
           f"seeds: {', '.join(map(str, st['seeds']))}."]
  if hold:
    lines.append(f"Held out of training: **{hold}**, scored after each body got a fresh table "
                 f"trained {st['ood_steps']} steps (the same for every cell; body "
                 f"{'frozen' if st['ood_freeze_body'] else 'trained too'}).")
  if ref:
    lines.append(f"Differences are arm minus **{ref}** "
                 f"({'the study baseline' if st.get('baseline') else 'the best STD arm'}), paired "
                 "on matching seeds, with 95% t intervals; negative = fewer bits per byte "
                 "(better).")
  ood_head = [f"{hold} bpb (OOD)", "Δ OOD"] if hold else []
  rows = []
  for a in arms:
    d = _vs(a, ref)
    rows.append([a["arm"], f"{a['lr']:g}", len(a["seeds"]) + len(a["diverged"]),
                 len(a["diverged"]), _pm(a["mean_bpb"]), _diff(d.get("mean")), _pct(d.get("mean")),
                 *([_pm(a["ood_bpb"]), _diff(d.get("ood"))] if hold else []),
                 f"{sum(v or 0 for v in a['tokens'].values()):,.0f}",
                 _num(a["wall_s"]["mean"], 0), _num(a["cpu_s"]["mean"], 0),
                 _bytes(a["comm_bytes"])])
  lines += ["", "## Summary", ""] + _table(
      ["arm", "lr", "seeds", "diverged", "bpb (mean of sources)", f"Δ vs {ref} [95% CI]", "Δ %",
       *ood_head, "tokens seen", "train wall s", "train CPU s", "comm per worker"], rows)
  verdicts = verdict_lines(summary)
  if verdicts:
    lines += ["", "## Against the reference", "", *verdicts]
  lines += ["", "## Bits per byte per source (mean ± std over seeds)", ""] + _table(
      ["arm", *sources], [[a["arm"], *(_pm(a["bpb"][s]) for s in sources)] for a in arms])
  if ref:
    lines += ["", f"## Paired difference against {ref} per source (mean [95% CI])", ""] + _table(
        ["arm", *sources],
        [[a["arm"], *(_diff(_vs(a, ref)[s]) for s in sources)] for a in arms])
  lines += ["", "## Tokens seen per source (mean over seeds)", ""] + _table(
      ["arm", *sources], [[a["arm"], *(f"{a['tokens'][s] or 0:,.0f}" for s in sources)]
                          for a in arms])
  if summary["sweep"]:
    lines += ["", f"## Learning-rate sweep (seed {summary['sweep'][0]['seed']}; rule: "
              f"{st['lr_rule']})", ""] + _table(
        ["arm", "lr", "status", "train loss first -> last", "bpb (mean)", "picked"],
        [[r["arm"], f"{r['lr']:g}", r["status"] if r["stable"] or r["status"] != "done"
          else "done, loss did not fall",
          f"{_num(r['train_loss_first'])} -> {_num(r['train_loss_last'])}", _num(r["mean_bpb"]),
          "yes" if r["picked"] else ""] for r in summary["sweep"]])
  return "\n".join(lines) + "\n"


def write(summary: dict, folder: str) -> list[str]:
  paths = [os.path.join(folder, n) for n in ("results.md", "results.json", "cells.csv")]
  with open(paths[0], "w") as f:
    f.write(markdown(summary))
  with open(paths[1], "w") as f:
    json.dump(summary, f, indent=2)
  sources = summary["study"]["sources"]
  with open(paths[2], "w", newline="") as f:
    w = csv.writer(f)
    w.writerow([*CELL_COLUMNS, *(f"bpb/{s}" for s in sources), *(f"tokens/{s}" for s in sources)])
    for r in summary["cells"]:
      w.writerow([r.get(k) if k != "ood_bpb" else _ood_bpb(r) for k in CELL_COLUMNS]
                 + [r["bpb"].get(s) for s in sources] + [r["tokens"].get(s) for s in sources])
  return paths
