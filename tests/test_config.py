"""Bad configs fail before anything compiles, with a message naming the key to change."""
import os
import subprocess
import sys

import jax
import pytest

from dept_jax import config_lib, experiment
from dept_jax.config_lib import ConfigError


def cfg(**kw):
  c = config_lib.base_config()
  c.update_from_flattened_dict(kw)
  return c


@pytest.mark.parametrize("overrides, key, words", [
    ({"variant": "fedsgd"}, "config.variant", "unknown variant 'fedsgd'"),
    ({"steps": 0}, "config.steps", "must be positive"),
    ({"local_steps": -5}, "config.local_steps", "must be positive"),
    ({"steps": 100, "local_steps": 30}, "config.local_steps", "whole number of rounds"),
    ({"batch_size": 3}, "config.batch_size", "not divisible by data*fsdp=2"),
    ({"model.n_heads": 5}, "config.model.n_heads", "not divisible by n_heads=5"),
    ({"model.n_kv_heads": 3}, "config.model.n_kv_heads", "not divisible by n_kv_heads=3"),
    ({"mesh.data": 3}, "config.mesh", "needs 12 devices but 8 are present"),
    ({"mesh.source": 3}, "config.mesh.source", "cannot split the 4 sources"),
    ({"outer.optimizer": "adam"}, "config.outer.optimizer", "unknown outer optimizer"),
    ({"model.remat": "some"}, "config.model.remat", "unknown remat policy"),
    ({"outer.sources_per_round": 9}, "config.outer.sources_per_round", "not in 0..4"),
    ({"data.num_sources": 3, "outer.sources_per_round": 2, "mesh.source": 2}, "config.mesh.source",
     "cannot each keep an equal share of the 3 sources' banks"),
    ({"log.every": 0}, "config.log.every", "must be positive"),
    ({"checkpoint.every": -3}, "config.checkpoint.every", "must be >= 0, got -3"),
    ({"checkpoint.keep": -1}, "config.checkpoint.keep", "must be >= 0, got -1"),
    ({"eval.every": -2}, "config.eval.every", "must be >= 0, got -2"),
    ({"optim.lr": float("nan")}, "config.optim.lr", "nan is not a finite number"),
    ({"optim.lr": 0.0}, "config.optim.lr", "learning rate must be positive, got 0.0"),
    ({"outer.lr": float("inf")}, "config.outer.lr", "inf is not a finite number"),
    ({"optim.warmup_steps": -1}, "config.optim.warmup_steps", "must be >= 0"),
])
def test_bad_config_names_the_key(overrides, key, words):
  with pytest.raises(ConfigError) as e:
    config_lib.validate(cfg(**overrides), 8)
  assert str(e.value).startswith(key + ":"), str(e.value)
  assert words in str(e.value) and "Fix:" in str(e.value)


def test_setup_fails_before_compiling(monkeypatch):
  """experiment.setup validates first: no jit is ever built for a bad config."""
  def no_jit(*a, **k):
    raise AssertionError("compiled before validating")
  monkeypatch.setattr(jax, "jit", no_jit)
  with pytest.raises(ConfigError, match="config.batch_size"):
    experiment.setup(cfg(batch_size=3), None)


def test_mesh_resolution():
  assert config_lib.validate(cfg(), 8) == {"source": 4, "data": 2, "fsdp": 1, "tensor": 1}
  assert config_lib.validate(cfg(), 1) == {"source": 1, "data": 1, "fsdp": 1, "tensor": 1}
  assert config_lib.validate(cfg(variant="std"), 8)["data"] == 8
  shape = config_lib.validate(cfg(**{"outer.sources_per_round": 2}), 8)
  assert shape["source"] == 2 and shape["data"] == 4
  # With a bank the slice count also divides the sources: 4 of 6 per round -> 2 slices, not 4.
  shape = config_lib.validate(cfg(**{"data.num_sources": 6, "outer.sources_per_round": 4}), 8)
  assert shape["source"] == 2


def test_cli_reports_config_errors_without_traceback(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  root = os.path.dirname(os.path.dirname(__file__))
  proc = subprocess.run(
      [sys.executable, "-m", "dept_jax.main", "--config", "configs/tiny.py:spec",
       "--workdir", str(tmp_path / "run"), "--config.model.n_heads=3"],
      cwd=root, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert "config.model.n_heads" in proc.stderr and "Traceback" not in proc.stderr
  assert not (tmp_path / "run" / "checkpoints").exists()
