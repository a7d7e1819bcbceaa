"""The tiny config as 2 processes on localhost (4 fake CPU devices each, gloo collectives over TCP)
through the same CLI path a TPU pod uses (--num_processes/--process_id/--coordinator_address)
must match the single-process 8-device run: same mesh, same losses, one writer."""
import json
import os
import re
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = ["--config.steps=20", "--config.local_steps=10", "--config.log.every=5",
             "--config.log.progress=False", "--config.log.tensorboard=False"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _run_two_processes(workdir, timeout=600, config="configs/tiny.py:spec", overrides=OVERRIDES):
  """Both processes' outputs. A port taken between _free_port and the coordinator's bind (another
  program got it first) is retried once on a fresh port."""
  for attempt in range(2):
    outs, codes = _start_two(workdir, timeout, config, overrides, _free_port())
    if attempt == 0 and any(c and "address already in use" in o.lower()
                            for c, o in zip(codes, outs)):
      continue
    break
  for pid, (code, out) in enumerate(zip(codes, outs)):
    assert code == 0, f"process {pid} failed:\n{out[-3000:]}"
  return outs


def _start_two(workdir, timeout, config, overrides, port):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  env.pop("DEPT_JAX_DISTRIBUTED", None)
  procs = []
  for pid in range(2):
    cmd = [sys.executable, "-m", "dept_jax.main", "--config", config,
           "--workdir", workdir, *overrides, "--num_processes=2", f"--process_id={pid}",
           f"--coordinator_address=localhost:{port}"]
    procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=timeout)[0])
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    pytest.fail(f"2-process run did not finish in {timeout}s")
  return outs, [p.returncode for p in procs]


def test_two_processes_match_one(tmp_path):
  from ml_collections import config_flags  # noqa: F401  (config file loading below)
  import importlib.util

  import jax

  from dept_jax import train
  assert jax.device_count() == 8  # conftest: the single-process run has the same 8-device mesh
  multi = str(tmp_path / "multi")
  outs = _run_two_processes(multi)

  spec = importlib.util.spec_from_file_location("tiny_cfg", os.path.join(ROOT, "configs/tiny.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config("spec")
  config.steps, config.local_steps, config.log.every = 20, 10, 5
  config.log.progress = config.log.tensorboard = False
  single = str(tmp_path / "single")
  train.train(config, single)

  got, want = _metrics(multi), _metrics(single)
  assert [r["step"] for r in got] == [r["step"] for r in want] == [5, 10, 15, 20]
  for g, w in zip(got, want):
    for key, value in w.items():
      if key.startswith(("train/", "eval/", "outer/")):
        assert g[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (g["step"], key)
    # The outer step's cross-source bytes come from the compiled HLO in both runs.
    assert g.get("comm/outer_bytes") == w.get("comm/outer_bytes")
  assert got[1]["comm/outer_bytes"] > 0
  # Only process 0 writes: one metrics file with no duplicated rows, one checkpoint tree.
  assert len(got) == 4
  assert sorted(os.listdir(os.path.join(multi, "checkpoints"))) == \
      sorted(os.listdir(os.path.join(single, "checkpoints")))
  assert "step 20 eval" in outs[0] and "step 20 eval" not in outs[1]


def test_two_hosts_prepare_their_share_and_read_their_rows_of_text(tmp_path):
  """Text data on 2 processes: each host tokenizes its share of the units into the shared cache
  and builds only the batch rows its devices hold; the run equals the 1-process run."""
  from test_data_fixtures import write_tree

  from dept_jax import train
  tree = write_tree(str(tmp_path / "tree"), kinds=("code", "cyrillic", "greek", "latin"),
                    n_docs=10, words=1500)
  overrides = ["--config.variant=trim", "--config.steps=4", "--config.local_steps=2",
               "--config.batch_size=4", "--config.seq_len=32", "--config.model.d_model=32",
               "--config.model.n_layers=1", "--config.model.d_ff=64", "--config.model.n_heads=2",
               "--config.data.vocab_size=400", "--config.data.unit_mb=0.02",
               "--config.data.eval_batches=1", "--config.log.every=2",
               "--config.log.progress=False", "--config.log.tensorboard=False"]
  multi = str(tmp_path / "multi")
  outs = _run_two_processes(multi, config=f"configs/folders.py:{tree}",
                            overrides=overrides + [f"--config.data.cache_dir={tmp_path}/c2"])
  done = [sum(int(x) for x in re.findall(r"tokenized (\d+) of", out)) for out in outs]
  assert all(d > 0 for d in done), done  # both hosts prepared units
  import importlib.util
  spec = importlib.util.spec_from_file_location("f", os.path.join(ROOT, "configs/folders.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(tree)
  c.update_from_flattened_dict({o[len("--config."):].split("=")[0]: _value(o)
                                for o in overrides})
  c.data.cache_dir = str(tmp_path / "c1")
  single = str(tmp_path / "single")
  train.train(c, single)
  got, want = _metrics(multi), _metrics(single)
  assert [r["step"] for r in got] == [r["step"] for r in want] == [2, 4]
  for g, w in zip(got, want):
    for key, value in w.items():
      if key.startswith(("train/", "eval/")):
        assert g[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (g["step"], key)


def _value(override):
  v = override.split("=", 1)[1]
  for cast in (int, float):
    try:
      return cast(v)
    except ValueError:
      pass
  return {"False": False, "True": True}.get(v, v)
