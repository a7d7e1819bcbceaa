"""launch/ scripts: each --dry-run prints the exact commands a pod run needs, runs nothing."""
import os
import subprocess
import types

import pytest

from dept_jax.config_lib import ConfigError
from dept_jax.mesh import make_mesh, slice_major

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE = ["--name", "dept", "--zone", "us-central2-b", "--type", "v4-32"]
RUN = ["--config", "configs/pile_125m.py:spec", "--workdir", "/mnt/gcs/bkt/runs/p125"]


def dry(script, *args):
  env = dict(os.environ, PATH="/usr/bin:/bin")  # no gcloud/sbatch needed: nothing may run
  out = subprocess.run(["bash", os.path.join(ROOT, "launch", script), "--dry-run", *args],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
  assert out.returncode == 0, out.stderr
  return out.stdout


def commands(text):
  return [line[2:].removesuffix(" &") for line in text.splitlines() if line.startswith("+ ")]


def test_create_tpu_vm_and_queued_resource():
  cmds = commands(dry("tpu_create.sh", *NODE))
  assert cmds == ["gcloud compute tpus tpu-vm create dept --zone=us-central2-b "
                  "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base"]
  cmds = commands(dry("tpu_create.sh", "--queued", "--spot", *NODE))
  assert cmds[0] == ("gcloud compute tpus queued-resources create dept --zone=us-central2-b "
                     "--accelerator-type=v4-32 --runtime-version=tpu-ubuntu2204-base "
                     "--node-id=dept --spot")
  assert "describe dept" in cmds[1] and "state.state" in cmds[1]


def test_multislice_create_uses_node_count():
  cmds = commands(dry("tpu_create.sh", *NODE, "--slices", "4"))
  assert "--node-count=4 --node-prefix=dept" in cmds[0]
  assert cmds[0].startswith("gcloud compute tpus queued-resources create dept ")


def test_install_on_every_worker():
  cmds = commands(dry("tpu_install.sh", *NODE))
  assert cmds[0].startswith("git -C ") and " archive " in cmds[0]
  assert cmds[1].startswith("gcloud compute tpus tpu-vm scp ") and "--worker=all" in cmds[1]
  assert "--worker=all" in cmds[2] and "pip install" in cmds[2] and "jax[tpu]" in cmds[2]
  multi = commands(dry("tpu_install.sh", *NODE, "--slices", "2"))
  assert [c.split()[5] for c in multi if " ssh " in c] == ["dept-0", "dept-1"]


def test_prepare_runs_on_every_worker_too():
  cmds = commands(dry("tpu_run.sh", *NODE, *RUN, "--", "--mode=prepare",
                      "--config.data.cache_dir=/mnt/gcs/bkt/cache"))
  assert len(cmds) == 1 and "--worker=all" in cmds[0]
  assert ("DEPT_JAX_DISTRIBUTED=1 ~/venv/bin/python -m dept_jax.main --config "
          "configs/pile_125m.py:spec --workdir /mnt/gcs/bkt/runs/p125 --mode=prepare "
          "--config.data.cache_dir=/mnt/gcs/bkt/cache") in cmds[0]


def test_run_same_command_on_all_workers():
  cmds = commands(dry("tpu_run.sh", *NODE, *RUN, "--", "--config.steps=100"))
  assert len(cmds) == 1
  c = cmds[0]
  assert c.startswith("gcloud compute tpus tpu-vm ssh dept --zone=us-central2-b --worker=all ")
  assert ("DEPT_JAX_DISTRIBUTED=1 ~/venv/bin/python -m dept_jax.main --config "
          "configs/pile_125m.py:spec --workdir /mnt/gcs/bkt/runs/p125 --config.steps=100") in c


def test_run_multislice_one_source_per_slice():
  cmds = commands(dry("tpu_run.sh", *NODE, *RUN, "--slices", "2"))
  assert [c.split()[5] for c in cmds] == ["dept-0", "dept-1"]
  for c in cmds:
    assert "--worker=all" in c and "--config.mesh.source=2 --workdir /mnt/gcs/bkt/runs/p125" in c


def test_run_requires_workdir():
  out = subprocess.run(["bash", "launch/tpu_run.sh", "--dry-run", *NODE], cwd=ROOT,
                       capture_output=True, text=True, timeout=30)
  assert out.returncode == 2 and "--workdir is required" in out.stderr


def test_resume_recreates_installs_and_reruns_same_command():
  cmds = commands(dry("tpu_resume.sh", *NODE, "--spot", *RUN))
  assert cmds[0] == "gcloud compute tpus queued-resources delete dept --zone=us-central2-b --force --quiet"
  assert cmds[1].startswith("gcloud compute tpus queued-resources create dept ") and "--spot" in cmds[1]
  assert any(" scp " in c for c in cmds) and any("pip install" in c for c in cmds)
  assert "--workdir /mnt/gcs/bkt/runs/p125" in cmds[-1] and "--worker=all" in cmds[-1]


def test_slurm_script():
  text = dry("slurm_gpu.sh", "--nodes", "4", "--gpus-per-node", "8", *RUN, "--", "--config.steps=7")
  assert "#SBATCH --nodes=4" in text and "#SBATCH --gpus-per-node=8" in text
  assert "#SBATCH --ntasks-per-node=1" in text and "#SBATCH --requeue" in text
  assert "export DEPT_JAX_DISTRIBUTED=1" in text
  assert ("srun " in text and "-m dept_jax.main --config configs/pile_125m.py:spec --workdir "
          "/mnt/gcs/bkt/runs/p125 --config.steps=7") in text
  assert commands(text) == ["sbatch <the script above>"]


def test_delete():
  assert commands(dry("tpu_delete.sh", *NODE)) == [
      "gcloud compute tpus tpu-vm delete dept --zone=us-central2-b --quiet"]


def test_devices_ordered_slice_by_slice():
  devs = [types.SimpleNamespace(id=i, slice_index=s) for i, s in enumerate([1, 0, 1, 0])]
  assert [d.id for d in slice_major(devs)] == [1, 3, 0, 2]


def test_source_axis_must_not_split_a_slice_across_dcn():
  devs = [types.SimpleNamespace(id=i, slice_index=i // 2) for i in range(4)]
  with pytest.raises(ConfigError, match="mesh.source.*multiple of 2"):
    make_mesh({"source": 1, "data": 4, "fsdp": 1, "tensor": 1}, devs)
