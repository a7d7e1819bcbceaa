"""End-to-end runs of the trainer on synthetic sources: every variant learns, and a run leaves
config.json, metrics.jsonl, TensorBoard events and a plot behind."""
import glob
import json
import os

import pytest

from dept_jax import config_lib, report, train


def small(variant, **kw):
  c = config_lib.base_config()
  c.variant = variant
  c.steps, c.local_steps, c.batch_size, c.seq_len = 40, 10, 4, 32
  c.model.update(d_model=32, n_layers=2, n_heads=4, d_ff=64)
  c.data.update(num_sources=4, vocab_size=64, source_vocab_size=48)
  c.optim.update(lr=1e-2, warmup_steps=5)
  c.log.update(every=5, progress=False)
  c.checkpoint.async_save = False
  c.update(kw)
  return c


def read(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f]


@pytest.mark.parametrize("variant", ["std", "glob", "trim", "spec", "spec_opt"])
def test_every_variant_lowers_its_loss(variant, tmp_path):
  workdir = str(tmp_path / variant)
  train.train(small(variant), workdir)
  rows = read(workdir)
  names = [f"source{k}" for k in range(4)]
  first = [r for r in rows if "train/source0/loss" in r][0]
  last = [r for r in rows if "train/source0/loss" in r][-1]
  for n in names:
    assert last[f"train/{n}/loss"] < first[f"train/{n}/loss"] - 0.5, (n, first, last)
  evals = [r for r in rows if "eval/source0/bits_per_byte" in r]
  assert evals[-1]["eval/source0/bits_per_byte"] < evals[0]["eval/source0/bits_per_byte"]


def test_run_leaves_its_files(tmp_path):
  workdir = str(tmp_path / "run")
  train.train(small("spec"), workdir)
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["variant"] == "spec"
  rows = read(workdir)
  logged = [r for r in rows if "tokens_per_sec" in r]
  for key in ("step", "round", "lr", "tokens_per_sec", *(f"train/source{k}/loss" for k in range(4))):
    assert all(key in r for r in logged), key
  outer = [r for r in rows if "comm/outer_bytes" in r]
  assert [r["step"] for r in outer] == [10, 20, 30, 40]
  assert all(r["comm/outer_bytes"] > 0 for r in outer)  # 8 devices: 4 source slices
  assert all(r["comm/outer_payload_bytes"] == r["comm/outer_bytes"] for r in outer)
  assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
  assert os.path.exists(report.plot(workdir))
  with open(os.path.join(workdir, "eval.json")) as f:
    final = json.load(f)["final"]
  assert final["step"] == 40 and "eval/source3/bits_per_byte" in final
