"""--mode=study: every arm x seed of a study config at one token budget, then the table and plots.

  python -m dept_jax.main --mode=study --config configs/study_tiny.py --workdir runs/study_tiny

1. The study block and every cell's training config are checked before anything trains.
2. Phase 1: the learning-rate sweep (swept arms, first seed, training only) and every cell of the
   arms that are not swept (training, then the held-out source's adaptation).
3. Each swept arm keeps the rate its sweep picks (the paper: the highest that finished without
   diverging); phase 2 runs its cells at that rate (the sweep's cell at that rate is reused).
4. WORKDIR gets results.md, results.json, cells.csv, curves.png and final_bpb.png; the cells live
   in WORKDIR/cells/<variant>-s<seed>-<hash>/ and the same command resumes an interrupted study.
"""
from __future__ import annotations

import json
import os

from dept_jax import config_lib
from dept_jax.study import grid, results, scheduler, table
from dept_jax.study.cell import write_json
from dept_jax.study.grid import StudyError


def _prepare(cell: grid.Cell, cells_dir: str) -> scheduler.Task:
  d = os.path.join(cells_dir, cell.key)
  os.makedirs(d, exist_ok=True)
  path = os.path.join(d, "cell.json")
  if not os.path.exists(path):  # the key hashes the config: an existing cell.json is this cell
    write_json(path, {"arm": cell.arm.name, "variant": cell.arm.variant, "seed": cell.seed,
                      "lr": cell.lr, "config": json.loads(cell.config.to_json_best_effort()),
                      "ood": cell.ood,
                      "ood_key": cell.ood_key})
  return scheduler.Task(d, ("train", "ood") if cell.ood else ("train",),
                        f"{cell.arm.name} seed {cell.seed} lr {cell.lr:g}")


def _devices(s) -> tuple[str, int, int]:
  """(platform, devices present, devices each cell sees)."""
  if s.isolate:
    platform, count = scheduler.discover_devices()
  else:
    import jax
    platform, count = jax.devices()[0].platform, jax.device_count()
  per_cell = count
  if s.isolate and platform != "cpu" and 0 < s.devices_per_cell < count:
    per_cell = s.devices_per_cell
  return platform, count, per_cell


def _check_cells(cells, n_devices: int):
  """Each cell's training config passes the trainer's own checks before any cell starts."""
  for c in cells:
    try:
      config_lib.validate(c.config, n_devices)
    except config_lib.ConfigError as e:
      raise StudyError(f"arm '{c.arm.name}' (seed {c.seed}): {e}") from None


def pick_lr(arm: str, recs: list[dict], rule: str) -> float:
  ok = [r for r in recs if results.stable(r)]
  if not ok:
    tried = ", ".join(f"{r['lr']:g}: {r['status']}" for r in recs)
    raise StudyError(f"config.study.lr_sweep: no rate finished without diverging for arm "
                     f"'{arm}' ({tried}). Fix: add lower rates to study.lr_sweep.")
  if rule == "lowest_bpb":
    return min(ok, key=lambda r: r["mean_bpb"])["lr"]
  return max(r["lr"] for r in ok)


def run(config, workdir: str) -> dict:
  s = grid.check(config)
  name = os.path.basename(os.path.abspath(workdir))
  cells_dir = os.path.join(workdir, "cells")
  os.makedirs(cells_dir, exist_ok=True)
  with open(os.path.join(workdir, "study_config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  base_lr = grid.base_config(config).optim.lr
  arms = grid.arms(config)
  seeds = list(s.seeds)
  sweeps = {a.name: [grid.cell(config, a, seeds[0], lr, name) for lr in s.lr_sweep]
            for a in arms if grid.swept(config, a)}
  main = {a.name: [grid.cell(config, a, seed, base_lr, name) for seed in seeds]
          for a in arms if a.name not in sweeps}
  platform, count, per_cell = _devices(s)
  _check_cells([c for cs in [*sweeps.values(), *main.values()] for c in cs], per_cell)
  budget = grid.token_budget(config)
  print(f"[study] {len(arms)} arms x {len(seeds)} seeds at {budget:,} training tokens each"
        + (f", learning-rate sweep {tuple(s.lr_sweep)} for {', '.join(sweeps)}" if sweeps else ""),
        flush=True)

  def run_phase(cells, stages=None):
    tasks = [_prepare(c, cells_dir) for c in cells]
    if stages:
      tasks = [scheduler.Task(t.cell_dir, stages, t.label) for t in tasks]
    if s.isolate:
      scheduler.run_isolated(tasks, platform, scheduler.device_groups(count, per_cell))
    else:
      scheduler.run_in_process(tasks)

  try:
    run_phase([c for cs in sweeps.values() for c in cs], ("train",))
    run_phase([c for cs in main.values() for c in cs])
    sweep_recs, picks = [], {}
    for arm_name, cells in sweeps.items():
      recs = [results.cell_record(os.path.join(cells_dir, c.key)) for c in cells]
      picks[arm_name] = pick_lr(arm_name, recs, s.lr_rule)
      for r in recs:
        r.update(stable=results.stable(r), picked=r["lr"] == picks[arm_name])
      sweep_recs += recs
    for a in arms:
      if a.name in picks:
        main[a.name] = [grid.cell(config, a, seed, picks[a.name], name) for seed in seeds]
    run_phase([c for a in arms if a.name in picks for c in main[a.name]])
  except KeyboardInterrupt:
    print("[study] stopped: running cells saved checkpoints. Run the same command again to "
          "resume; finished cells are kept.", flush=True)
    return {}

  records = {a.name: [results.cell_record(os.path.join(cells_dir, c.key)) for c in main[a.name]]
             for a in arms}
  info = {"name": name, "sources": grid.training_sources(config), "holdout": s.holdout,
          "token_budget": budget, "seeds": seeds, "baseline": s.baseline,
          "std_arms": [a.name for a in arms if a.is_std], "lr_rule": s.lr_rule,
          "lr_sweep": list(s.lr_sweep), "grid": s.grid, "ood_steps": s.ood_steps,
          "ood_freeze_body": s.ood_freeze_body}
  summary = table.summarize(records, sweep_recs, info)
  paths = table.write(summary, workdir)
  from dept_jax.study import plots
  paths += plots.plot(records, summary, workdir)
  print(table.markdown(summary), flush=True)
  print("[study] wrote " + ", ".join(paths), flush=True)
  return summary
