"""The study command: cells at one token budget, paired differences on matching seeds, a study
that resumes without re-running finished cells, and the table and plots it leaves behind."""
import json
import math
import os
import shutil

import numpy as np
import pytest
from scipy import stats as scipy_stats

from dept_jax import config_lib
from dept_jax.study import grid, results, runner, scheduler, stats, table
from dept_jax.study.grid import StudyError


def study_config(**study):
  c = config_lib.base_config()
  c.steps, c.local_steps, c.batch_size, c.seq_len = 10, 5, 8, 16  # 8 devices: batch 8
  c.model.update(d_model=32, n_layers=1, n_heads=4, d_ff=64)
  c.data.update(num_sources=4, vocab_size=64, eval_batches=1)
  c.optim.warmup_steps = 2
  c.log.update(every=5, tensorboard=False)
  c.checkpoint.async_save = False
  c.study = grid.study_block(**{"variants": ("std_tau1", "spec"), "seeds": (0, 1),
                                "holdout": "source3", "ood_steps": 4, "isolate": False, **study})
  return c


# ------------------------------------------------------------------ the grid
def test_every_cell_trains_the_same_tokens_when_dept_samples_sources():
  c = study_config(variants=("std", "spec", "trim"), grid="outer.sources_per_round=0,2",
                   holdout="")
  budget = grid.token_budget(c)
  assert budget == 10 * 4 * 8 * 16  # steps x sources x batch x seq_len of the base config
  cells = {a.name: grid.cell(c, a, 0, 1e-3) for a in grid.arms(c)}
  # STD ignores outer.*: one STD arm, not two.
  assert sorted(cells) == ["spec outer.sources_per_round=0", "spec outer.sources_per_round=2",
                           "std", "trim outer.sources_per_round=0",
                           "trim outer.sources_per_round=2"]
  for name, cell in cells.items():
    cfg = cell.config
    rows = cfg.batch_size * (4 if cfg.variant == "std" else cfg.outer.sources_per_round or 4)
    assert cfg.steps * rows * cfg.seq_len == budget, name
    assert cfg.steps % cfg.local_steps == 0
  assert cells["spec outer.sources_per_round=2"].config.steps == 20


def test_a_grid_over_the_learning_rate_sets_each_cells_rate():
  c = study_config(variants=("spec",), grid="optim.lr=0.01,0.03")
  cells = [grid.cell(c, a, 0, c.optim.lr) for a in grid.arms(c)]
  assert [(cell.lr, cell.config.optim.lr) for cell in cells] == [(0.01, 0.01), (0.03, 0.03)]


def test_budget_rounds_up_to_whole_rounds():
  c = study_config(variants=("spec",), token_budget=2000, holdout="")
  cell = grid.cell(c, grid.arms(c)[0], 0, 1e-3)
  assert cell.config.steps == 5  # 2000 / (4 x 8 x 16) = 3.9 steps -> one round of 5


def test_holdout_leaves_training_and_every_cell_adapts_the_same_way():
  c = study_config()
  cells = [grid.cell(c, a, s, lr) for a in grid.arms(c) for s, lr in ((0, 1e-3), (1, 3e-2))]
  for cell in cells:
    assert list(cell.config.data.chains) == [0, 1, 2] and cell.config.data.num_sources == 3
  assert len({json.dumps(cell.ood, sort_keys=True) for cell in cells}) == 1
  ood = cells[0].ood
  assert ood["source"] == "source3" and ood["data"]["chain"] == 3 and ood["steps"] == 4
  assert ood["optim"]["lr"] == c.optim.lr  # not the arm's own rate


def test_a_changed_setting_is_a_new_cell_and_logging_is_not():
  c = study_config()
  arm = grid.arms(c)[0]
  key = grid.cell(c, arm, 0, 1e-3).key
  c.log.every = 1
  assert grid.cell(c, arm, 0, 1e-3).key == key
  c.model.d_ff = 128
  assert grid.cell(c, arm, 0, 1e-3).key != key
  assert grid.cell(c, arm, 1, 1e-3).key != grid.cell(c, arm, 0, 1e-3).key


def test_with_wandb_every_cell_is_a_run_in_the_studys_group():
  c = study_config()
  c.log.wandb = "offline"
  cells = [grid.cell(c, a, seed, 1e-3, "study_x") for a in grid.arms(c) for seed in (0, 1)]
  assert {cell.config.log.wandb_group for cell in cells} == {"study_x"}
  assert len({cell.config.log.wandb_name for cell in cells}) == 4
  assert len({cell.key for cell in cells}) == 4  # logging settings do not make new cells
  c.log.wandb_group = "mine"
  assert grid.cell(c, grid.arms(c)[0], 0, 1e-3, "study_x").config.log.wandb_group == "mine"


@pytest.mark.parametrize("study, message", [
    (dict(grid="model.width=1,2"), "config.study.grid: 'model.width' is not a config key. Fix:"),
    (dict(grid="steps=10,20"), "config.study.grid: 'steps' is set by the study. Fix:"),
    (dict(grid="local_steps"), "config.study.grid: 'local_steps' is not KEY=V1,V2,...."),
    (dict(variants=("std", "bert")), "config.study.variants: unknown variant 'bert'"),
    (dict(seeds=(0, 0)), "config.study.seeds: (0, 0) is empty or repeats a seed"),
    (dict(holdout="source9"), "config.study.holdout: 'source9' is not a source (source0, "),
    (dict(lr_sweep=(1e-3, -1.0)), "config.study.lr_sweep: (0.001, -1.0) holds a rate"),
    (dict(grid="optim.lr=0.1,0.2", lr_sweep=(0.1,)), "config.study.grid: optim.lr is in the grid and"),
    (dict(baseline="std"), "config.study.baseline: 'std' is not an arm of this study"),
    (dict(ood_steps=0), "config.study.ood_steps: must be positive, got 0. Fix:"),
    (dict(devices_per_cell=-1), "config.study.devices_per_cell: must be >= 0, got -1. Fix:"),
])
def test_bad_study_settings_fail_in_one_line(study, message):
  with pytest.raises(StudyError) as e:
    grid.check(study_config(**study))
  assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_std_presets_set_the_mixture_temperature():
  c = config_lib.base_config()
  assert config_lib.set_variant(c, "std_tau0").data.temperature == 0.0 and c.variant == "std"
  assert config_lib.set_variant(c, "std_tau1").data.temperature == 1.0
  assert config_lib.set_variant(c, "spec").variant == "spec"
  assert c.data.temperature == 1.0  # a DEPT variant leaves the temperature alone
  with pytest.raises(config_lib.ConfigError, match="config.variant: unknown variant 'std_tau2'"):
    config_lib.set_variant(c, "std_tau2")


# ------------------------------------------------------------------ statistics and the table
def test_paired_difference_uses_matching_seeds_only():
  arm = {0: 1.0, 1: 2.0, 2: 4.0, 3: 9.9}
  ref = {0: 0.5, 1: 1.0, 2: 3.0, 7: 1.0}
  d = stats.paired_difference(arm, ref)
  assert d["seeds"] == [0, 1, 2] and d["n"] == 3
  diffs = np.array([0.5, 1.0, 1.0])
  half = scipy_stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / math.sqrt(3)
  assert d["mean"] == pytest.approx(2.5 / 3)
  assert (d["ci_low"], d["ci_high"]) == pytest.approx((2.5 / 3 - half, 2.5 / 3 + half))
  assert half == pytest.approx(4.302653 * 0.288675 / math.sqrt(3), rel=1e-5)
  assert d["relative"] == pytest.approx((2.5 / 3) / 1.5)
  one = stats.paired_difference({0: 1.0}, {0: 0.5, 1: 2.0})
  assert one["n"] == 1 and one["mean"] == 0.5 and one["ci_low"] is None
  assert stats.verdict(d) == "higher" and stats.verdict(one) == "too few seeds to tell"


def record(arm, variant, seed, bpb, ood=None, status="done", lr=1e-3):
  return {"cell": f"{arm}-{seed}", "arm": arm, "variant": variant, "seed": seed, "lr": lr,
          "steps": 10, "status": status, "wall_s": 2.0, "bpb": dict(bpb) if status == "done" else {},
          "mean_bpb": float(np.mean(list(bpb.values()))) if status == "done" else None,
          "tokens": {k: 100 for k in bpb}, "comm_bytes": 1000, "curve": [],
          "ood": {"status": "done", "bits_per_byte": ood} if ood is not None else None,
          "train_loss_first": 5.0, "train_loss_last": 3.0}


def test_table_pairs_on_seeds_and_takes_the_best_std_arm():
  main = {
      "std_tau0": [record("std_tau0", "std_tau0", s, {"a": 3.0, "b": 3.0}, 5.0) for s in (0, 1, 2)],
      "std_tau1": [record("std_tau1", "std_tau1", s, {"a": 2.0 + s / 10, "b": 2.0}, 4.0 + s)
                   for s in (0, 1, 2)],
      # seed 1 diverged: it leaves the means and the pairs
      "spec": [record("spec", "spec", 0, {"a": 1.5, "b": 2.0}, 3.0),
               record("spec", "spec", 1, {"a": 0.0, "b": 0.0}, status="diverged"),
               record("spec", "spec", 2, {"a": 1.9, "b": 1.8}, 5.5)],
  }
  info = {"name": "t", "sources": ["a", "b"], "holdout": "c", "token_budget": 1000,
          "seeds": [0, 1, 2], "baseline": "", "std_arms": ["std_tau0", "std_tau1"],
          "lr_rule": "highest_stable", "lr_sweep": [], "grid": "", "ood_steps": 4,
          "ood_freeze_body": False}
  summary = table.summarize(main, [], info)
  assert summary["study"]["reference"] == "std_tau1"
  spec = next(a for a in summary["arms"] if a["arm"] == "spec")
  assert spec["seeds"] == [0, 2] and spec["diverged"] == [1]
  assert spec["bpb"]["a"]["mean"] == pytest.approx(1.7)
  vs = spec["vs_reference"]
  assert vs["a"]["seeds"] == [0, 2] and vs["a"]["mean"] == pytest.approx(((1.5 - 2.0) + (1.9 - 2.2)) / 2)
  assert vs["ood"]["mean"] == pytest.approx(((3.0 - 4.0) + (5.5 - 6.0)) / 2)
  text = table.markdown(summary)
  assert "| spec | 0.001 | 3 | 1 | 1.800 ± 0.071 | -0.250 [-0.250, -0.250] | -12.2% |" in text
  assert "| std_tau1 | 0.001 | 3 | 0 | 2.050 ± 0.050 | (reference) |" in text
  assert "- **std_tau0**: 0.950 higher than std_tau1 on bits per byte, mean of sources" in text


def test_lr_pick_follows_the_papers_rule():
  recs = [dict(record("std", "std", 0, {"a": b}, lr=lr)) for lr, b in ((1e-3, 2.0), (3e-3, 1.5),
                                                                        (1e-2, 1.8))]
  recs.append(record("std", "std", 0, {"a": 1.0}, status="diverged", lr=3e-2))
  assert runner.pick_lr("std", recs, "highest_stable") == 1e-2
  assert runner.pick_lr("std", recs, "lowest_bpb") == 3e-3
  recs[2]["train_loss_last"] = 6.0  # finished, but the loss rose: not stable
  assert runner.pick_lr("std", recs, "highest_stable") == 3e-3
  with pytest.raises(StudyError, match=r"no rate finished without diverging for arm 'std' "
                     r"\(0.03: diverged\). Fix: add lower rates"):
    runner.pick_lr("std", recs[3:], "highest_stable")


def test_device_groups_and_their_environment():
  assert scheduler.device_groups(8, 2) == [(0, 1), (2, 3), (4, 5), (6, 7)]
  assert scheduler.device_groups(8, 3) == [(0, 1, 2), (3, 4, 5)]
  assert scheduler.device_groups(4, 0) == [(0, 1, 2, 3)]
  assert scheduler.device_env("gpu", (2, 3), 1)["CUDA_VISIBLE_DEVICES"] == "2,3"
  tpu = scheduler.device_env("tpu", (1,), 1)
  assert tpu["TPU_VISIBLE_CHIPS"] == "1" and tpu["TPU_CHIPS_PER_PROCESS_BOUNDS"] == "1,1,1"
  assert tpu["TPU_MESH_CONTROLLER_PORT"] != scheduler.device_env("tpu", (0,), 0)[
      "TPU_MESH_CONTROLLER_PORT"]
  assert scheduler.device_env("cpu", (0,), 0) == {}
  with pytest.raises(StudyError, match="3 TPU chips per cell"):
    scheduler.device_env("tpu", (0, 1, 2), 0)


# ------------------------------------------------------------------ a whole study
def starts(cell_dir):
  with open(os.path.join(cell_dir, "attempts.jsonl")) as f:
    return [e for e in map(json.loads, f) if e["event"] == "start"]


def test_a_study_runs_resumes_and_never_reruns_a_finished_cell(tmp_path):
  c = study_config(lr_sweep=(3e-3, 3e-2))
  workdir = str(tmp_path / "study")
  summary = runner.run(c, workdir)
  cells_dir = os.path.join(workdir, "cells")
  dirs = sorted(os.listdir(cells_dir))
  assert len(dirs) == 5  # 2 sweep rates (one reused as seed 0), std seed 1, spec seeds 0 and 1
  before = {d: len(starts(os.path.join(cells_dir, d))) for d in dirs}
  # Each stage started once: training everywhere, the OOD adaptation in the 4 main cells.
  assert sorted(before.values()) == [1, 2, 2, 2, 2]

  # Run again: nothing starts, the same table comes out.
  again = runner.run(c, workdir)
  assert {d: len(starts(os.path.join(cells_dir, d))) for d in dirs} == before
  assert again["arms"] == summary["arms"]

  # A cell killed in its second round (no marker, newest checkpoint at step 5) resumes there,
  # and only it runs; resuming is exact, so the table does not change.
  spec = next(a for a in grid.arms(c) if a.name == "spec")
  killed = os.path.join(cells_dir, grid.cell(c, spec, 1, c.optim.lr).key)
  for path in ("train.json", "run/eval.json"):
    os.remove(os.path.join(killed, path))
  shutil.rmtree(os.path.join(killed, "run", "checkpoints", "10"))
  resumed = runner.run(c, workdir)
  after = {d: len(starts(os.path.join(cells_dir, d))) for d in dirs}
  assert after == {**before, os.path.basename(killed): before[os.path.basename(killed)] + 1}
  assert starts(killed)[-1] == {**starts(killed)[-1], "stage": "train", "start_step": 5}
  for a, b in zip(resumed["arms"], summary["arms"]):
    assert a["tokens"] == b["tokens"]
    for source, got in a["bpb"].items():
      assert got["mean"] == pytest.approx(b["bpb"][source]["mean"], rel=1e-6), (a["arm"], source)

  # The table holds what the cells measured.
  for a in summary["arms"]:
    assert len(a["seeds"]) == 2 and sum(a["tokens"].values()) == grid.token_budget(c)
  spec_arm = next(a for a in summary["arms"] if a["arm"] == "spec")
  recs = [results.cell_record(os.path.join(cells_dir, grid.cell(c, spec, s, c.optim.lr).key))
          for s in (0, 1)]
  with open(os.path.join(killed, "run", "eval.json")) as f:
    final = json.load(f)["final"]
  assert final["step"] == 10
  assert recs[1]["bpb"]["source2"] == final["eval/source2/bits_per_byte"]
  assert spec_arm["bpb"]["source2"]["mean"] == pytest.approx(
      np.mean([r["bpb"]["source2"] for r in recs]))
  assert spec_arm["ood_bpb"]["mean"] == pytest.approx(
      np.mean([r["ood"]["bits_per_byte"] for r in recs]))
  assert summary["study"]["reference"] == "std_tau1"
  picked = [r for r in summary["sweep"] if r["picked"]]
  assert len(picked) == 1 and next(a for a in summary["arms"] if a["arm"] == "std_tau1")[
      "lr"] == picked[0]["lr"]
  # Every OOD adaptation started from its own cell's body, with the same settings.
  ood_configs = []
  for r in recs:
    ood_dir = [d for d in os.listdir(os.path.join(cells_dir, r["cell"])) if d.startswith("ood-")
               and os.path.isdir(os.path.join(cells_dir, r["cell"], d))][0]
    with open(os.path.join(cells_dir, r["cell"], ood_dir, "config.json")) as f:
      oc = json.load(f)
    assert oc["init_from"]["workdir"] == os.path.join(cells_dir, r["cell"], "run")
    ood_configs.append((oc["optim"], oc["steps"], oc["data"]))
  assert ood_configs[0] == ood_configs[1]
  for name in ("results.md", "results.json", "cells.csv", "curves.png", "final_bpb.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  with open(os.path.join(workdir, "cells.csv")) as f:
    assert len(f.readlines()) == 1 + 4


def test_isolated_cells_run_in_their_own_processes(tmp_path):
  c = study_config(variants=("spec",), seeds=(0,), holdout="", isolate=True)
  workdir = str(tmp_path / "study")
  summary = runner.run(c, workdir)
  (cell_dir,) = [os.path.join(workdir, "cells", d) for d in os.listdir(os.path.join(workdir,
                                                                                    "cells"))]
  (start,) = starts(cell_dir)
  assert start["pid"] != os.getpid()
  assert summary["arms"][0]["mean_bpb"]["n"] == 1
  assert "step 10 eval" in open(os.path.join(cell_dir, "log.txt")).read()
