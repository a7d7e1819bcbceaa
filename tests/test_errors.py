"""Failures that arise outside dept_jax's own checks end in one line naming the problem and the fix:
a bad --config key or file (raised while absl parses flags) and a disk that refuses a write."""
import errno
import os
import subprocess
import sys

from dept_jax import errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args, file_size_limit=None, env=None):
  """python -m dept_jax.main ARGS; with file_size_limit, every file it writes is capped (set in
  the child before it execs, so no fork of this multithreaded process runs Python code)."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
             **(env or {}))
  cmd = [sys.executable, "-m", "dept_jax.main", *args]
  if file_size_limit:
    cmd = [sys.executable, "-c", _CAPPED, str(file_size_limit), *cmd]
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


# A write past RLIMIT_FSIZE fails with EFBIG (instead of killing the process by SIGXFSZ).
_CAPPED = """import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]),) * 2)
os.execv(sys.argv[2], sys.argv[2:])"""


def test_unknown_config_key_and_missing_config_file_end_in_one_line(tmp_path):
  """Before: a 55-line traceback from ml_collections, raised before main ran."""
  proc = cli("--config", "configs/tiny.py:spec", "--config.modle.d_model=3",
             "--workdir", str(tmp_path / "run"))
  assert proc.returncode == 2
  assert proc.stderr.strip() == (
      "dept_jax: error: --config.modle.d_model=3: the config has no key 'modle' (Did you mean "
      "\"model\" instead of \"modle\"?). Fix: use a key the config has (the defaults are in "
      "dept_jax/config_lib.py).")
  proc = cli("--config", "configs/nothere.py", "--workdir", str(tmp_path / "run"))
  assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert "--config configs/nothere.py: cannot load the config file ([Errno 2]" in proc.stderr
  proc = cli("--config", "configs/tiny.py:spec", "--config.steps=1.5",
             "--workdir", str(tmp_path / "run"))
  assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert "--config.steps=1.5: invalid literal for int()" in proc.stderr
  assert not (tmp_path / "run").exists()


def test_a_url_as_the_workdir_is_refused_before_anything_is_written(tmp_path):
  """Before: --workdir gs://bucket/run made a local folder named 'gs:' and trained into it."""
  proc = cli("--config", "configs/tiny.py:spec", "--workdir", "gs://bucket/run")
  assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert "--workdir=gs://bucket/run: run and export folders are written through the local" in (
      proc.stderr)
  assert not os.path.exists(os.path.join(ROOT, "gs:"))


def test_a_write_the_disk_refuses_during_a_run_ends_in_one_line(tmp_path):
  """Before: a full disk ended in 457 lines of orbax and tensorstore tracebacks. Here every file
  is capped at 12 KB (EFBIG, the same family as ENOSPC): the first checkpoint cannot be written,
  since orbax's sharding record is 22 KB whatever the timing. (A 1 MB cap was flaky: how the
  arrays split into data files depends on thread timing, so step 2's sometimes fitted.) Then the
  same command without the cap trains to the end."""
  workdir = str(tmp_path / "run")
  args = ("--config", "configs/tiny.py:spec", "--config.steps=4", "--config.local_steps=2",
          "--config.batch_size=4", "--config.seq_len=32", "--config.log.progress=False",
          "--workdir", workdir)
  # Compiled programs go to a cache of this test's: a capped write truncates their files.
  env = {"DEPT_JAX_COMPILATION_CACHE": str(tmp_path / "xla")}
  proc = cli(*args, file_size_limit=12 << 10, env=env)
  assert proc.returncode == 2, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f"dept_jax: error: cannot write {workdir}/checkpoints/2."), last
  assert "File too large. Fix: free space on that disk" in last
  assert "training resumes from its last complete checkpoint" in last
  assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr, proc.stderr
  assert not os.path.exists(os.path.join(workdir, "checkpoints", "2"))

  proc = cli(*args, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))[:2] == ["2", "4"]


def test_disk_error_line_reads_oserrors_and_tensorstore_messages():
  e = OSError(errno.ENOSPC, "No space left on device", "/data/run/metrics.jsonl")
  assert errors.disk_error_line(e, "/data/run") == (
      "cannot write /data/run/metrics.jsonl: No space left on device. Fix: free space on that "
      "disk (or raise the quota or file-size limit), or use a --workdir on another disk; then run "
      "the same command again (training resumes from its last complete checkpoint).")
  nameless = OSError(errno.ENOSPC, "No space left on device")  # file.write() names no file
  assert errors.disk_error_line(nameless, "/data/run").startswith("cannot write /data/run: No")
  try:
    try:
      raise ValueError('OUT_OF_RANGE: Error writing "a/0.0" in OCDBT database at local file '
                       '"/r/ckpt/9.orbax-checkpoint-tmp/": Failed writing: "/r/ckpt/9.orbax-'
                       'checkpoint-tmp/d/ab12": Failed to write [os_error_code=\'28\']')
    except ValueError as inner:
      raise RuntimeError("Save Finalize thread failed") from inner
  except RuntimeError as outer:
    line = errors.disk_error_line(outer, "/r")
  assert line.startswith("cannot write /r/ckpt/9.orbax-checkpoint-tmp/d/ab12: No space left")
  readonly = OSError(errno.EROFS, "Read-only file system", "/ro/x")
  assert "Fix: make it writable" in errors.disk_error_line(readonly, "/ro")
  assert errors.disk_error_line(ValueError("shapes differ"), "/r") is None
  assert errors.disk_error_line(FileNotFoundError(errno.ENOENT, "gone", "/x"), "/r") is None
