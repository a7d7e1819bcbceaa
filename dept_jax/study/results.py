"""What one finished cell measured, read from its folder: the run's eval.json and metrics.jsonl
(the trainer's public outputs) and the study's stage markers."""
from __future__ import annotations

import json
import os

from dept_jax.study.cell import ood_marker, read_json

BPB = "/bits_per_byte"


def read_rows(run_dir: str) -> list[dict]:
  path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]


def eval_bpb(row: dict) -> dict:
  """{source: bits per byte} of a metrics row or eval.json entry."""
  return {k[len("eval/"):-len(BPB)]: v for k, v in row.items()
          if k.startswith("eval/") and k.endswith(BPB) and isinstance(v, (int, float))}


def tokens_seen(rows) -> dict:
  """{source: training target tokens}, summed over the logged intervals."""
  out = {}
  for r in rows:
    for k, v in r.items():
      if k.startswith("train/") and k.endswith("/tokens"):
        name = k[len("train/"):-len("/tokens")]
        out[name] = out.get(name, 0) + int(v)
  return out


def communication(rows, steps: int) -> int:
  """Bytes one worker sends over the run: DEPT's outer-step payloads; STD an all-reduce of the
  whole gradient every step."""
  outer = sum(int(r["comm/outer_payload_bytes"]) for r in rows if "comm/outer_payload_bytes" in r)
  per_step = [r["comm/step_payload_bytes"] for r in rows if "comm/step_payload_bytes" in r]
  return outer + (int(per_step[-1]) * steps if per_step else 0)


def curve(rows) -> list[dict]:
  """[{tokens: cumulative training tokens, step, bpb: {source: value}}] at every evaluation."""
  out, total = [], 0
  for r in rows:
    total += sum(int(v) for k, v in r.items() if k.startswith("train/") and k.endswith("/tokens"))
    bpb = eval_bpb(r)
    if bpb:
      out.append({"tokens": total, "step": r["step"], "bpb": bpb})
  return out


def cell_record(cell_dir: str) -> dict:
  spec = read_json(os.path.join(cell_dir, "cell.json"))
  trained = read_json(os.path.join(cell_dir, "train.json")) or {"status": "missing"}
  run_dir = os.path.join(cell_dir, "run")
  rows = read_rows(run_dir)
  losses = [r["train/loss"] for r in rows if isinstance(r.get("train/loss"), (int, float))]
  steps = spec["config"]["steps"]
  rec = {"cell": os.path.basename(cell_dir), "arm": spec["arm"], "variant": spec["variant"],
         "seed": spec["seed"], "lr": spec["lr"], "steps": steps, "status": trained["status"],
         "wall_s": trained.get("wall_s"), "cpu_s": trained.get("cpu_s"), "bpb": {},
         "mean_bpb": None,
         "train_loss_first": losses[0] if losses else None,
         "train_loss_last": losses[-1] if losses else None,
         "tokens": tokens_seen(rows), "comm_bytes": communication(rows, steps),
         "curve": curve(rows), "ood": None}
  ev = read_json(os.path.join(run_dir, "eval.json"))
  if trained["status"] == "done" and ev:
    rec["bpb"] = eval_bpb(ev["final"])
    rec["mean_bpb"] = sum(rec["bpb"].values()) / len(rec["bpb"])
  if spec.get("ood"):
    rec["ood"] = read_json(ood_marker(cell_dir, spec))
  return rec


def stable(rec: dict) -> bool:
  """Finished its schedule without diverging: no non-finite stop, and the training loss fell."""
  return (rec["status"] == "done" and rec["train_loss_last"] is not None
          and rec["train_loss_last"] < rec["train_loss_first"])
