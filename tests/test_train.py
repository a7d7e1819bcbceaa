"""End-to-end runs of the trainer on synthetic sources: every variant learns, and a run leaves
config.json, metrics.jsonl, TensorBoard events and a plot behind."""
import glob
import json
import os

import jax
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


def test_one_local_step_stays_in_flight(tmp_path, monkeypatch):
  """A step's metrics are read only after the next step was dispatched, except where the loop
  must settle (log, eval, round end, checkpoint); nothing is lost from the logged means."""
  import numpy as np

  from dept_jax import experiment
  dispatched, reads = [0], []
  real_setup, real_get = experiment.setup, train.host_get

  def setup(config, workdir, devices=None):
    exp = real_setup(config, workdir, devices)
    step = exp.program.local_step

    def counting(state, batch):
      dispatched[0] += 1
      return step(state, batch)
    exp.program = exp.program._replace(local_step=counting)
    return exp

  def host_get(tree):
    if isinstance(tree, dict) and "finite" in tree:
      reads.append(dispatched[0])
    return real_get(tree)
  monkeypatch.setattr(experiment, "setup", setup)
  monkeypatch.setattr(train, "host_get", host_get)
  c = small("spec", steps=10, local_steps=10)
  c.log.every = 5
  train.train(c, str(tmp_path / "late"))
  assert reads == [t if t % 5 == 0 else t + 1 for t in range(1, 11)]

  monkeypatch.setattr(train, "host_get", real_get)
  c.log.every = 1
  train.train(c, str(tmp_path / "every"))
  late, every = read(str(tmp_path / "late")), read(str(tmp_path / "every"))
  for n in ("source0", "source3"):
    per_step = [r[f"train/{n}/loss"] for r in every if f"train/{n}/loss" in r]
    logged = [r[f"train/{n}/loss"] for r in late if f"train/{n}/loss" in r]
    np.testing.assert_allclose(logged, [np.mean(per_step[:5]), np.mean(per_step[5:])], rtol=1e-6)


def test_a_nan_read_late_saves_the_step_in_flight(tmp_path, monkeypatch):
  """NaN at step 3 (no log there) is read after step 4 was dispatched: the run stops naming step 3
  and saves step 4, whose state is finite (step 3's bad update was never applied)."""
  import jax.numpy as jnp
  import numpy as np

  from dept_jax import experiment, model
  from dept_jax.checkpoint import Checkpointer
  real_loss, real_host_batch = model.loss_fn, experiment.Experiment.host_batch

  def loss_fn(params, batch, vocab_size, cfg):
    loss, aux = real_loss(params, batch, vocab_size, cfg)
    return jnp.where(jnp.all(batch["inputs"] == 0, axis=-1).any(), jnp.nan, loss), aux

  def host_batch(self, step):
    batch = real_host_batch(self, step)
    if step == 2:  # the third step: source1's first row all zeros
      batch = dict(batch, inputs=batch["inputs"].copy())
      batch["inputs"][1, 0, :] = 0
    return batch
  monkeypatch.setattr(model, "loss_fn", loss_fn)
  monkeypatch.setattr(experiment.Experiment, "host_batch", host_batch)
  c = small("spec", steps=10, local_steps=10)
  workdir = str(tmp_path / "run")
  with pytest.raises(train.NonFiniteLossError) as e:
    train.train(c, workdir)
  assert "non-finite loss at step 3 (round 0), source(s) source1" in str(e.value)
  assert "last good state (step 4" in str(e.value)
  ckpt = Checkpointer(workdir, c.checkpoint)
  assert ckpt.all_steps() == [4]
  _, state, data, _ = ckpt.restore(experiment.setup(c, workdir).program.abstract_state)
  assert np.asarray(state["skipped"]).tolist() == [0, 1, 0, 0]
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["slots"]))
  assert data["sources"] == ["source0", "source1", "source2", "source3"]
