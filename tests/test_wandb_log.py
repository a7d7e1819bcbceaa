"""The optional W&B logger: an offline run written beside metrics.jsonl, read back from its file."""
import glob
import json
import os
import struct
import time

import pytest

from dept_jax import config_lib, train
from dept_jax.config_lib import ConfigError

wandb = pytest.importorskip("wandb")


def read_records(path):
  """The records of a .wandb file: a 7-byte header, then LevelDB-style log blocks of 32 KiB whose
  chunks (crc32, length, type) hold serialized protobuf Records."""
  from wandb.proto import wandb_internal_pb2 as pb
  with open(path, "rb") as f:
    data = f.read()
  block, pos, buf, out = 32768, 7, b"", []
  while pos + 7 <= len(data):
    if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
      pos += block - pos % block
      continue
    _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
    if pos + 7 + n > len(data):  # the writer is still appending this chunk
      break
    buf += data[pos + 7:pos + 7 + n]
    pos += 7 + n
    if kind in (1, 4):  # FULL or LAST chunk: a whole record
      rec = pb.Record()
      try:
        rec.ParseFromString(buf)
      except Exception:  # a record whose bytes are not all written yet
        break
      out.append(rec)
      buf = b""
    elif kind == 0 and n == 0:
      break
  return out


def small():
  c = config_lib.base_config()
  c.variant = "spec"
  c.steps, c.local_steps, c.batch_size, c.seq_len = 10, 5, 4, 16
  c.model.update(d_model=32, n_layers=2, n_heads=4, d_ff=64)
  c.data.update(num_sources=2, vocab_size=64)
  c.log.update(every=5, progress=False, tensorboard=False, wandb="offline",
               wandb_project="dept_jax_test", wandb_group="study_x")
  c.checkpoint.async_save = False
  return c


def test_offline_run_holds_the_config_group_and_the_metrics(tmp_path):
  workdir = str(tmp_path / "run")
  train.train(small(), workdir)
  files = glob.glob(os.path.join(workdir, "wandb", "offline-run-*", "run-*.wandb"))
  assert len(files) == 1
  # wandb's writer is a service process of its own: on a loaded machine its last blocks can land
  # just after finish() returns, so the file is read again for a few seconds before judging it.
  for _ in range(120):
    records = read_records(files[0])
    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    if runs and any(r.WhichOneof("record_type") == "exit" for r in records):
      break  # the exit record is written last, after every history row
    time.sleep(0.5)
  kinds = sorted({r.WhichOneof("record_type") for r in records})
  assert runs and "exit" in kinds, f"the offline run's file holds only {kinds} after 60 s"
  run = runs[0]
  assert run.project == "dept_jax_test" and run.run_group == "study_x"
  assert run.display_name == "run"
  config = {u.key: json.loads(u.value_json) for u in run.config.update}
  assert config["variant"] == "spec" and config["steps"] == 10
  assert config["model"]["d_model"] == 32 and config["log"]["wandb"] == "offline"
  history = {}
  for r in records:
    if r.WhichOneof("record_type") == "history":
      row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
      history[row["_step"]] = row
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  assert [r["step"] for r in rows] == sorted(history) == [5, 10]
  for r in rows:
    for key in ("eval/source0/bits_per_byte", "train/source1/loss", "train/source1/tokens"):
      assert history[r["step"]][key] == pytest.approx(r[key], rel=1e-6), key


def test_unknown_mode_is_refused_before_anything_runs():
  c = small()
  c.log.wandb = "cloud"
  with pytest.raises(ConfigError, match=r"config.log.wandb: unknown mode 'cloud'. Fix: use"):
    config_lib.validate(c, 8)
