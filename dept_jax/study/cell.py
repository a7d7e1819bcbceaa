"""One study cell, run by the study in its own process (or in the study's, isolate=False):

  python -m dept_jax.study.cell CELL_DIR [--stages train,ood]

CELL_DIR/cell.json holds the cell's training config and its OOD spec. Stages, each finished at most
once (its marker file is written last, so a killed stage has none and resumes next time):
  train  trains CELL_DIR/run (resuming from its checkpoint) -> train.json
  ood    the held-out source on the trained body: a fresh table and tokenizer trained the same
         short way for every cell, then scored -> ood-<hash>.json (trained in ood-<hash>/)
Every start and end is appended to attempts.jsonl (what the resume tests count).
Exit status: 0 the stages are finished (a diverged run is finished too), 3 interrupted (SIGTERM:
the run saved a checkpoint), anything else a crash (see the cell's log).
"""
from __future__ import annotations

import json
import os
import sys
import time

import ml_collections

INTERRUPTED = 3


def read_json(path: str):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_json(path: str, obj) -> None:
  with open(path + ".tmp", "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(path + ".tmp", path)  # a marker is whole or absent


def ood_marker(cell_dir: str, spec: dict) -> str:
  return os.path.join(cell_dir, f"ood-{spec['ood_key']}.json")


def finished_stages(cell_dir: str) -> set[str]:
  spec = read_json(os.path.join(cell_dir, "cell.json")) or {}
  done = {"train"} if os.path.exists(os.path.join(cell_dir, "train.json")) else set()
  if spec.get("ood") and os.path.exists(ood_marker(cell_dir, spec)):
    done.add("ood")
  return done


def latest_checkpoint(run_dir: str) -> int | None:
  """The newest saved step (orbax keeps one folder per step; unfinished saves carry a suffix)."""
  d = os.path.join(run_dir, "checkpoints")
  steps = [int(n) for n in os.listdir(d) if n.isdigit()] if os.path.isdir(d) else []
  return max(steps) if steps else None


def _note(cell_dir: str, **event):
  with open(os.path.join(cell_dir, "attempts.jsonl"), "a") as f:
    f.write(json.dumps({"time": time.time(), "pid": os.getpid(), **event}) + "\n")


def _completed(run_dir: str, steps: int) -> bool:
  ev = read_json(os.path.join(run_dir, "eval.json"))
  return bool(ev) and ev["final"].get("step") == steps


def _train(config, run_dir: str, cell_dir: str, stage: str) -> dict | None:
  """Train (or resume) one run; its record, or None when it was interrupted."""
  from dept_jax import train
  _note(cell_dir, stage=stage, event="start", start_step=latest_checkpoint(run_dir))
  t0, cpu0 = time.perf_counter(), _cpu_seconds()
  record = {"status": "done"}
  try:
    train.train(config, run_dir)
  except train.NonFiniteLossError as e:
    record = {"status": "diverged", "error": str(e)}
  _note(cell_dir, stage=stage, event="end", wall_s=time.perf_counter() - t0,
        cpu_s=_cpu_seconds() - cpu0)
  if record["status"] == "done" and not _completed(run_dir, config.steps):
    return None
  with open(os.path.join(cell_dir, "attempts.jsonl")) as f:
    ends = [e for e in map(json.loads, f) if e["stage"] == stage and e["event"] == "end"]
  for key in ("wall_s", "cpu_s"):  # over every attempt, interrupted ones included
    record[key] = sum(e[key] for e in ends)
  return record


def _cpu_seconds() -> float:
  """This process's CPU time (every thread: XLA's included). On a shared machine it measures
  the work where wall time measures the contention."""
  import resource
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def ood_config(parent_run: str, ood: dict):
  from dept_jax import config_lib, continued
  d, steps = ood["data"], ood["steps"]
  if d["kind"] == "text":
    c = continued.new_source_config(
        parent_run, {ood["source"]: ml_collections.ConfigDict(d["source"])}, steps=steps,
        local_steps=steps, freeze_body=ood["freeze_body"])
  else:
    data = config_lib.base_config().data
    data.update(vocab_size=d["vocab_size"], eval_batches=d["eval_batches"], num_sources=1)
    data.chains = (d["chain"],)
    c = continued.new_source_config(parent_run, data=data, steps=steps, local_steps=steps,
                                    freeze_body=ood["freeze_body"])
  c.optim = ml_collections.ConfigDict(ood["optim"])
  c.log.progress = False
  c.checkpoint.async_save = False
  return c


def run_cell(cell_dir: str, stages=("train", "ood")) -> int:
  spec = read_json(os.path.join(cell_dir, "cell.json"))
  config = ml_collections.ConfigDict(spec["config"])
  run_dir = os.path.join(cell_dir, "run")
  done = finished_stages(cell_dir)
  if "train" in stages and "train" not in done:
    record = _train(config, run_dir, cell_dir, "train")
    if record is None:
      return INTERRUPTED
    write_json(os.path.join(cell_dir, "train.json"), record)
  if "ood" in stages and spec.get("ood") and "ood" not in done:
    trained = read_json(os.path.join(cell_dir, "train.json"))
    marker = ood_marker(cell_dir, spec)
    if trained["status"] != "done":
      write_json(marker, {"status": "skipped", "reason": "training diverged"})
      return 0
    ood = spec["ood"]
    ood_dir = os.path.join(cell_dir, f"ood-{spec['ood_key']}")
    record = _train(ood_config(run_dir, ood), ood_dir, cell_dir, "ood")
    if record is None:
      return INTERRUPTED
    if record["status"] == "done":
      final = read_json(os.path.join(ood_dir, "eval.json"))["final"]
      record.update({k: final[f"eval/{ood['source']}/{k}"] for k in ("bits_per_byte", "loss")})
    write_json(marker, record)
  return 0


def main(argv):
  import argparse
  p = argparse.ArgumentParser(prog="python -m dept_jax.study.cell")
  p.add_argument("cell_dir")
  p.add_argument("--stages", default="train,ood")
  args = p.parse_args(argv)
  from dept_jax import modes
  modes._enable_compilation_cache()  # the same cache as every other mode
  return run_cell(args.cell_dir, tuple(args.stages.split(",")))


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
