"""Checkpoints that always restore: bitwise resume after SIGKILL, SIGTERM saves and exits 0,
another device count, interrupted and corrupted saves, non-finite losses."""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dept_jax import config_lib, experiment, model, train
from dept_jax.checkpoint import Checkpointer, CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = ["--config", "configs/tiny.py:spec", "--config.steps=40", "--config.local_steps=10",
       "--config.checkpoint.every=5", "--config.checkpoint.keep=0", "--config.log.every=1",
       "--config.log.progress=False", "--config.batch_size=4", "--config.seq_len=32"]
DETERMINISTIC = ("train/", "eval/", "lr", "round", "comm/", "outer/", "skipped_updates")


def launch(workdir, devices=8, extra=(), run=RUN):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  return subprocess.Popen([sys.executable, "-m", "dept_jax.main", *run, "--workdir", workdir,
                           *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def finish(proc, timeout=300):
  out, _ = proc.communicate(timeout=timeout)
  return proc.returncode, out


def metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  by_step = {}
  for r in rows:
    by_step.setdefault(r["step"], {}).update(
        {k: v for k, v in r.items() if k.startswith(DETERMINISTIC)})
  return by_step


def wait_for_step(proc, workdir, step, timeout=240):
  path = os.path.join(workdir, "metrics.jsonl")
  t0 = time.time()
  while time.time() - t0 < timeout:
    if proc.poll() is not None:
      raise AssertionError(f"run ended early: {proc.stdout.read()}")
    if os.path.exists(path):
      with open(path) as f:  # a line still being appended has no newline yet
        steps = [json.loads(l)["step"] for l in f if l.endswith("\n")]
      if steps and max(steps) >= step:
        return
    time.sleep(0.05)
  raise AssertionError("timed out waiting for training progress")


def final_params(workdir, step=None):
  _, state, got = experiment.load_run(workdir, step)
  return got, jax.tree.map(np.asarray, jax.device_get(
      {"global": state["global"], "slots": state["slots"]["params"]}))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """One uninterrupted run that the interrupted ones must match."""
  workdir = str(tmp_path_factory.mktemp("ref") / "run")
  code, out = finish(launch(workdir))
  assert code == 0, out
  return workdir


def test_sigkill_then_rerun_is_bitwise_identical(reference, tmp_path):
  workdir = str(tmp_path / "run")
  proc = launch(workdir)
  wait_for_step(proc, workdir, 17)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert Checkpointer(workdir, config_lib.base_config().checkpoint).latest_step() < 40
  code, out = finish(launch(workdir))
  assert code == 0 and "resumed from step" in out, out
  assert metrics(workdir) == metrics(reference)
  step_a, a = final_params(workdir)
  step_b, b = final_params(reference)
  assert step_a == step_b == 40
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_text_data_resumes_bitwise_after_sigkill(tmp_path):
  """Real text through the token cache (TRIM, two sources): killed mid-run and run again, the
  run equals an uninterrupted one, metrics and parameters, bit for bit."""
  from test_data_fixtures import write_tree
  tree = write_tree(str(tmp_path / "tree"), kinds=("code", "latin"), n_docs=8, words=1500)
  run = ["--config", f"configs/folders.py:{tree}", "--config.variant=trim",
         "--config.steps=24", "--config.local_steps=6", "--config.checkpoint.every=3",
         "--config.checkpoint.keep=0", "--config.log.every=1", "--config.log.progress=False",
         "--config.batch_size=4", "--config.seq_len=32", "--config.model.d_model=32",
         "--config.model.n_layers=1", "--config.model.d_ff=64", "--config.data.vocab_size=400",
         "--config.data.eval_batches=1", "--config.data.cache_dir=" + str(tmp_path / "cache")]
  ref, killed = str(tmp_path / "ref"), str(tmp_path / "killed")
  code, out = finish(launch(ref, run=run))
  assert code == 0, out
  proc = launch(killed, run=run)
  wait_for_step(proc, killed, 10)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  code, out = finish(launch(killed, run=run))
  assert code == 0 and "resumed from step" in out, out
  assert metrics(killed) == metrics(ref)
  jax.tree.map(np.testing.assert_array_equal, final_params(killed)[1], final_params(ref)[1])


def test_sigterm_saves_and_exits_zero(reference, tmp_path):
  workdir = str(tmp_path / "run")
  proc = launch(workdir)
  wait_for_step(proc, workdir, 12)
  proc.send_signal(signal.SIGTERM)
  code, out = finish(proc)
  assert code == 0, out
  assert "SIGTERM: stopped after step" in out
  stopped = int(out.split("stopped after step ")[1].split(";")[0])
  assert 12 <= stopped < 40
  assert os.path.isdir(os.path.join(workdir, "checkpoints", str(stopped)))
  code, out = finish(launch(workdir))
  assert code == 0, out
  assert metrics(workdir) == metrics(reference)


def test_restore_on_fewer_devices_continues_with_the_same_loss(reference, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  for step_dir in glob.glob(os.path.join(workdir, "checkpoints", "*")):
    name = os.path.basename(step_dir)
    if name.isdigit() and int(name) > 20:
      shutil.rmtree(step_dir)
  code, out = finish(launch(workdir, devices=4))  # source=4 x data=1 instead of 4 x 2
  assert code == 0 and "resumed from step 20" in out, out
  got, ref = metrics(workdir), metrics(reference)
  assert sorted(got) == sorted(ref)
  for step in range(21, 41):
    for k, v in ref[step].items():
      if k.startswith("train/"):
        np.testing.assert_allclose(got[step][k], v, rtol=2e-4, err_msg=f"{k} at {step}")


def test_interrupted_save_is_ignored(reference, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  # What a kill during an async save leaves: a temporary folder with part of the files.
  partial = os.path.join(ckpt_dir, "45.orbax-checkpoint-tmp-1234")
  shutil.copytree(os.path.join(ckpt_dir, "40"), partial)
  shutil.rmtree(os.path.join(partial, "state"))
  assert Checkpointer(workdir, config_lib.base_config().checkpoint).latest_step() == 40
  got, _ = final_params(workdir)
  assert got == 40


def corrupt_one_file(step_dir):
  files = sorted(f for f in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True)
                 if os.path.isfile(f) and os.path.getsize(f) > 64)
  victim = max(files, key=os.path.getsize)
  with open(victim, "r+b") as f:
    f.seek(os.path.getsize(victim) // 2)
    b = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([b[0] ^ 0xFF]))
  return victim


def test_corrupted_checkpoint_is_named_and_fallback_works(reference, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  victim = corrupt_one_file(os.path.join(workdir, "checkpoints", "40"))
  with pytest.raises(CheckpointError) as e:
    final_params(workdir)
  msg = str(e.value)
  assert "step 40" in msg and victim in msg and "checkpoint.fallback=True" in msg
  c = config_lib.base_config().checkpoint
  c.fallback = True
  exp = experiment.setup(json_config(workdir), workdir)
  got, state, _, _ = Checkpointer(workdir, c).restore(exp.program.abstract_state)
  assert got == 35
  _, ref_state = final_params(reference, 35)
  np.testing.assert_array_equal(np.asarray(state["global"]["body"]["final_norm"]),
                                ref_state["global"]["body"]["final_norm"])


def json_config(workdir):
  import ml_collections
  with open(os.path.join(workdir, "config.json")) as f:
    return ml_collections.ConfigDict(json.load(f))


def nan_config(policy):
  c = config_lib.base_config()
  c.steps, c.local_steps, c.batch_size, c.seq_len = 12, 4, 4, 16
  c.model.update(d_model=32, n_layers=1, n_heads=4, d_ff=64)
  c.data.update(num_sources=4, vocab_size=64)
  c.log.update(every=1, progress=False)
  c.checkpoint.async_save = False
  c.on_nonfinite = policy
  return c


def plant_nan(monkeypatch, at_call: int, slot: int):
  """An all-zeros row makes that source's loss NaN: planted in `slot`'s batch of step at_call
  (1-based). Returns nothing; undone by monkeypatch."""
  real_loss = model.loss_fn

  def loss_fn(params, batch, vocab_size, cfg):
    loss, aux = real_loss(params, batch, vocab_size, cfg)
    poisoned = jnp.all(batch["inputs"] == 0, axis=-1).any()
    return jnp.where(poisoned, jnp.nan, loss), aux
  monkeypatch.setattr(model, "loss_fn", loss_fn)
  real_batch = experiment.Experiment.host_batch

  def host_batch(self, step):
    batch = real_batch(self, step)
    if step + 1 == at_call:
      batch["inputs"][slot, 0, :] = 0
    return batch
  monkeypatch.setattr(experiment.Experiment, "host_batch", host_batch)


@pytest.fixture
def planted_nan(monkeypatch):
  plant_nan(monkeypatch, at_call=7, slot=2)


def test_nan_stops_with_step_round_source_and_saves_last_good(planted_nan, tmp_path):
  workdir = str(tmp_path / "run")
  with pytest.raises(train.NonFiniteLossError) as e:
    train.train(nan_config("stop"), workdir)
  msg = str(e.value)
  assert "step 7 (round 1), source(s) source2" in msg
  assert "last good state (step 7" in msg
  ckpt = Checkpointer(workdir, nan_config("stop").checkpoint)
  assert ckpt.latest_step() == 7
  exp = experiment.setup(nan_config("stop"), workdir)
  _, state, data, _ = ckpt.restore(exp.program.abstract_state)
  assert int(state["step"]) == 7
  assert np.asarray(state["skipped"]).tolist() == [0, 0, 1, 0]
  for leaf in jax.tree.leaves(state["slots"]):
    assert np.isfinite(np.asarray(leaf)).all()
  # Resuming does not replay the bad batch: the data position is the saved step.
  assert data["sources"] == exp.names


def test_nan_right_after_a_round_end_checkpoint(monkeypatch, tmp_path):
  """Step 4 ends round 0 and is saved; a NaN at step 5 saves step 5 (no clash with step 4)."""
  plant_nan(monkeypatch, at_call=5, slot=0)
  workdir = str(tmp_path / "run")
  with pytest.raises(train.NonFiniteLossError, match="step 5 \\(round 1\\), source\\(s\\) source0"):
    train.train(nan_config("stop"), workdir)
  assert Checkpointer(workdir, nan_config("stop").checkpoint).all_steps() == [4, 5]


def test_nan_skip_counts_and_continues(planted_nan, tmp_path):
  workdir = str(tmp_path / "run")
  summary = train.train(nan_config("skip"), workdir)
  assert summary["skipped_updates"] == 1
  assert all(np.isfinite(v) for k, v in summary.items() if k.startswith("train/"))


# ----------------------------------------------------------------------------- issue 12


def newest_step_dir(workdir):
  ckpt = Checkpointer(workdir, config_lib.base_config().checkpoint)
  step = ckpt.latest_step()
  return step, os.path.join(ckpt.directory, str(step))


def test_fallback_sets_the_damaged_step_aside_and_the_run_finishes(reference, tmp_path):
  """Before: 'fell back to step 35', trained to 40 and died with orbax StepAlreadyExistsError."""
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  victim = corrupt_one_file(os.path.join(workdir, "checkpoints", "40"))
  code, out = finish(launch(workdir, extra=["--config.checkpoint.fallback=True"]))
  assert code == 0, out
  assert "moved the damaged step 40 to" in out and "resumed from step 35" in out, out
  damaged = os.path.join(workdir, "checkpoints", "damaged", "40")
  assert os.path.exists(os.path.join(damaged, os.path.relpath(
      victim, os.path.join(workdir, "checkpoints", "40"))))  # set aside whole, never deleted
  assert os.path.exists(damaged + ".json")  # its manifest went with it
  # The run redid steps 36..40 from the good step 35: the same numbers as the uninterrupted run.
  assert metrics(workdir) == metrics(reference)
  step_a, a = final_params(workdir)
  _, b = final_params(reference)
  assert step_a == 40
  jax.tree.map(np.testing.assert_array_equal, a, b)


def small_state(workdir, **ckpt):
  """A real (tiny) program state and a Checkpointer writing synchronously into workdir."""
  c = nan_config("stop")
  c.checkpoint.update(ckpt)
  exp = experiment.setup(c, workdir)
  return exp, exp.program.init(jax.random.key(0)), Checkpointer(workdir, c.checkpoint)


def test_each_save_is_sealed_in_the_background_without_a_next_save(tmp_path):
  """Before: a step's manifest was written at the start of the next save, so the newest step
  never had one."""
  workdir = str(tmp_path / "run")
  exp, state, ckpt = small_state(workdir, async_save=True)
  ckpt.save(3, state, {"streams": []}, {})
  manifest = os.path.join(ckpt.manifest_dir, "3.json")
  t0 = time.time()
  while not os.path.exists(manifest) and time.time() - t0 < 60:
    time.sleep(0.05)
  assert os.path.exists(manifest)
  ckpt.close()
  assert ckpt.verify(3)


def test_sigkill_then_flipped_bytes_in_the_newest_step_are_detected(tmp_path):
  """Before: the newest step had no checksum until the next save began, so after a SIGKILL its
  flipped bytes restored silently. Here step 100 is the newest for 100 steps: kill in that stretch
  (long enough that a loaded machine's sealer, at nice 10, writes its manifest well before the
  run could commit step 200)."""
  workdir = str(tmp_path / "run")
  proc = launch(workdir, extra=["--config.steps=200", "--config.local_steps=100",
                                "--config.checkpoint.every=0"])
  wait_for_step(proc, workdir, 105)
  manifest = os.path.join(workdir, "checkpoints", "manifests", "100.json")
  t0 = time.time()
  while not os.path.exists(manifest) and proc.poll() is None and time.time() - t0 < 60:
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  step, step_dir = newest_step_dir(workdir)
  assert step == 100 and os.path.exists(manifest)
  victim = corrupt_one_file(step_dir)
  exp = experiment.setup(json_config(workdir), workdir)
  with pytest.raises(CheckpointError, match=f"checkpoint at step 100 is damaged: {victim} does "
                     "not match its checksum"):
    Checkpointer(workdir, exp.config.checkpoint).restore(exp.program.abstract_state)


def test_a_step_without_a_manifest_is_checked_for_what_can_be_and_says_so(tmp_path, capsys):
  """A kill between orbax's commit and the end of hashing leaves the newest step unsealed."""
  workdir = str(tmp_path / "run")
  exp, state, ckpt = small_state(workdir)
  ckpt.save(4, state, {"streams": []}, {})
  ckpt.close()
  os.remove(os.path.join(ckpt.manifest_dir, "4.json"))
  got, _, _, _ = ckpt.restore(exp.program.abstract_state)
  assert got == 4
  assert ("step 4 has no checksum manifest (the run stopped before it was sealed): checked only "
          "that it reads and that every number is finite") in capsys.readouterr().out


def test_a_non_finite_restored_state_is_a_damaged_checkpoint_not_a_learning_rate(tmp_path):
  """Before: NaN moments restored silently and the run stopped with 'Fix: lower optim.lr'."""
  workdir = str(tmp_path / "run")
  exp, state, ckpt = small_state(workdir)
  slots = dict(state["slots"], opt=jax.tree.map(lambda x: x * np.nan if x.dtype == np.float32
                                                else x, state["slots"]["opt"]))
  ckpt.save(4, dict(state, slots=slots), train.data_state(exp),
            train.run_meta(exp))
  ckpt.close()
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(nan_config("stop").to_json())
  with pytest.raises(CheckpointError) as e:
    train.train(nan_config("stop"), workdir)
  msg = str(e.value)
  assert "step 4 is damaged" in msg and "hold NaN or inf" in msg and "['slots']['opt']" in msg
  assert "optim.lr" not in msg and "checkpoint.fallback=True" in msg


def test_a_save_that_cannot_fit_on_the_disk_fails_before_writing(tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  _, state, ckpt = small_state(workdir)
  free = shutil.disk_usage(workdir)._replace(free=1000)
  monkeypatch.setattr(shutil, "disk_usage", lambda path: free)
  with pytest.raises(CheckpointError, match=r"no space for the checkpoint at step 2 in .*: it "
                     r"needs about \d+ MB and 0 MB are free\. Fix: free space"):
    ckpt.save(2, state, {"streams": []}, {})
  assert ckpt.all_steps() == []


def test_eval_history_covers_the_whole_run_after_a_resume(tmp_path):
  """Before: eval.json's history held only the evaluations of the resumed part."""
  workdir = str(tmp_path / "run")
  c = nan_config("stop")
  c.steps = 8
  train.train(c, workdir)
  c.steps = 12  # extending a run is a setting a resume may change
  train.train(c, workdir)
  with open(os.path.join(workdir, "eval.json")) as f:
    saved = json.load(f)
  assert [h["step"] for h in saved["history"]] == [4, 8, 12]
  assert saved["final"]["step"] == 12
