"""A workdir belongs to one run: one writer at a time (a lock that a crash releases), and a run
resumes only with the settings it was trained with (those that steer how it goes on may change)."""
import json
import os
import signal
import subprocess
import sys

import pytest

from dept_jax import run_dir, train
from dept_jax.config_lib import ConfigError
from dept_jax.run_dir import WorkdirError
from test_checkpoint import nan_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
           PYTHONUNBUFFERED="1")


def tiny(**kw):
  c = nan_config("stop")  # a small synchronous-checkpoint run
  c.steps, c.local_steps, c.log.every = 4, 2, 2
  c.update_from_flattened_dict(kw)
  return c


def test_a_second_writer_refuses_at_once_and_a_crash_releases_the_lock(tmp_path):
  """Before: two runs on one workdir interleaved; one died with an orbax temp-file error."""
  workdir = str(tmp_path / "run")
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from dept_jax import run_dir\n"
       "with run_dir.exclusive(sys.argv[1]):\n  print('locked', flush=True); time.sleep(300)",
       workdir], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    proc = subprocess.run([sys.executable, "-m", "dept_jax.main", "--config",
                           "configs/tiny.py:spec", "--workdir", workdir], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "is in use by another training run" in err[0], proc.stderr
    assert f"pid {holder.pid}" in err[0] and "Fix: wait for that run to end" in err[0]
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))
    with pytest.raises(WorkdirError, match="in use by another training run"):
      with run_dir.exclusive(workdir):
        pass
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  with run_dir.exclusive(workdir):  # the kernel dropped the dead holder's lock
    with pytest.raises(WorkdirError):
      with run_dir.exclusive(workdir):  # ... and this process holds it now
        pass
  with run_dir.exclusive(workdir):  # released on leaving the block
    pass


def test_resuming_with_another_variant_or_model_refuses_and_keeps_config_json(tmp_path):
  """Before: orbax's tree-mismatch text plus a 'use fallback' hint, and config.json overwritten."""
  workdir = str(tmp_path / "run")
  train.train(tiny(), workdir)
  path = os.path.join(workdir, "config.json")
  with open(path, "rb") as f:
    before = f.read()
  with pytest.raises(ConfigError) as e:
    train.train(tiny(**{"variant": "glob", "model.d_model": 64}), workdir)
  msg = str(e.value)
  assert "\n" not in msg
  assert "model.d_model: 32 -> 64; variant: spec -> glob" in msg
  assert "Fix: pass a new --workdir for these settings, or restore them" in msg
  with open(path, "rb") as f:
    assert f.read() == before
  with pytest.raises(ConfigError, match=r"holds a run trained with other settings "
                     r"\(data.vocab_size: 64 -> 96\)"):
    train.train(tiny(**{"data.vocab_size": 96}), workdir)


def test_settings_that_steer_a_resumed_run_may_change_and_are_recorded(tmp_path):
  workdir = str(tmp_path / "run")
  train.train(tiny(), workdir)
  # The non-finite-loss error tells users to lower optim.lr and rerun; extending a run changes
  # steps; logging, checkpointing, evaluation, devices and speed knobs are free too.
  changed = {"steps": 6, "optim.lr": 1e-3, "optim.warmup_steps": 2, "log.every": 1,
             "checkpoint.keep": 5, "eval.every": 3, "on_nonfinite": "skip", "model.remat": "none",
             "mesh.source": 2}
  summary = train.train(tiny(**changed), workdir)
  assert summary  # it ran to step 6
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  assert saved["steps"] == 6 and saved["optim"]["lr"] == 1e-3
  with open(os.path.join(workdir, "config_history.jsonl")) as f:
    history = [json.loads(l) for l in f]
  assert history[-1]["changed"]["steps"] == [4, 6]
  assert history[-1]["changed"]["optim.lr"] == [3e-3, 1e-3]
  assert set(history[-1]["changed"]) == set(changed)


def test_changed_settings_and_which_may_change():
  saved = {"variant": "spec", "steps": 4, "optim": {"lr": 1.0, "b1": 0.9}, "data": {"a": 1}}
  now = {"variant": "spec", "steps": 8, "optim": {"lr": 2.0, "b1": 0.8}, "data": {"b": 1}}
  diff = run_dir.changed_settings(saved, now)
  assert diff == {"steps": (4, 8), "optim.lr": (1.0, 2.0), "optim.b1": (0.9, 0.8),
                  "data.a": (1, "<absent>"), "data.b": ("<absent>", 1)}
  assert [k for k in diff if not run_dir.resumable(k)] == ["data.a", "data.b", "optim.b1"]
  assert run_dir.resumable("checkpoint.fallback") and not run_dir.resumable("steps_extra")


def test_a_workdir_without_checkpoints_is_not_bound(tmp_path):
  """A run that failed before its first checkpoint left nothing to resume: any config may start."""
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(tiny(variant="glob").to_json())
  assert run_dir.bind_config(tiny(), workdir) == {}
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["variant"] == "spec"
