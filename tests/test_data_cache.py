"""The token cache: deterministic, resumable after a kill, checksummed, keyed by inputs and
tokenizer, validation held out by content with cross-split copies dropped, a full disk survived."""
import errno
import signal
import glob
import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dept_jax.config_lib import base_config
from dept_jax.data import cache, documents, text, tokenizers
from dept_jax.data.base import DataError
from test_data_fixtures import make_docs, write_tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(tree, cache_dir, variant="trim", **data):
  c = base_config()
  c.variant, c.batch_size, c.seq_len = variant, 4, 32
  text.add_text_data(c, text.folder_sources(tree))
  c.data.vocab_size, c.data.source_vocab_size = 400, 320
  c.data.cache_dir, c.data.unit_mb, c.data.workers = str(cache_dir), 0.02, 1
  for k, v in data.items():
    c.data[k] = v
  return c


def _digest(cache_dir) -> dict:
  out = {}
  for p in sorted(glob.glob(os.path.join(cache_dir, "tokens", "**"), recursive=True)):
    if os.path.isfile(p):
      out[os.path.relpath(p, cache_dir)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
  return out


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
  return write_tree(str(tmp_path_factory.mktemp("tree")), n_docs=16, words=1500)


@pytest.fixture(scope="module")
def reference(tree, tmp_path_factory):
  """One clean preparation to compare others with."""
  d = tmp_path_factory.mktemp("ref")
  srcs = text.prepare(_config(tree, d))
  return d, _digest(d), srcs


def test_preparation_is_deterministic_whatever_the_workers(tree, reference, tmp_path):
  ref_dir, ref, srcs = reference
  assert len([k for k in ref if k.endswith(".json") and "/units/" in k]) > 3
  text.prepare(_config(tree, tmp_path, workers=2))
  assert _digest(tmp_path) == ref
  # Every unit's manifest names its files' checksums, and they hold.
  for src in srcs.values():
    for u in src.units:
      assert src.cache.verify(u)


def test_a_killed_preparation_resumes_without_using_half_written_shards(tree, reference,
                                                                         tmp_path):
  """SIGKILL lands between renaming a unit's token file into place and writing its manifest
  (os.replace call 9: the tokenizer and its checksum, two whole units, then the third's tokens); a planted
  half-written .tmp shard is never read; the rerun finishes with the same bytes."""
  _, ref, _ = reference
  driver = textwrap.dedent(f"""
      import os, signal, sys
      sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})
      from test_data_cache import _config
      from dept_jax.data import cache, text
      calls, real = [0], os.replace
      def replace(a, b):
        real(a, b)
        calls[0] += 1
        if calls[0] == 9:
          os.kill(os.getpid(), signal.SIGKILL)
      cache.os.replace = replace
      text.prepare(_config({tree!r}, {str(tmp_path)!r}))
  """)
  proc = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True,
                        cwd=ROOT, timeout=300)
  assert proc.returncode == -9, proc.stderr[-2000:]
  units = os.path.join(tmp_path, "tokens", "*", "units")
  assert len(glob.glob(os.path.join(units, "*.json"))) == 2
  assert len(glob.glob(os.path.join(units, "*.tokens"))) == 3  # one without its manifest
  leftovers = glob.glob(os.path.join(units, "*.tmp*"))
  assert leftovers
  fake = leftovers[0].split(".tmp")[0] + ".tmp99999"
  with open(fake, "wb") as f:
    f.write(b"\xff" * 100)  # garbage a crash might leave
  srcs = text.prepare(_config(tree, tmp_path))
  after = {k: v for k, v in _digest(tmp_path).items() if ".tmp" not in k}
  assert after == ref
  assert all(src.cache.verify(u) for src in srcs.values() for u in src.units)


def test_damaged_shard_is_found_by_prepare_and_made_again(tree, reference, tmp_path):
  _, ref, _ = reference
  srcs = text.prepare(_config(tree, tmp_path))
  unit = srcs["latin"].units[1]
  path = srcs["latin"].cache.paths(unit.key())["tokens"]
  raw = bytearray(open(path, "rb").read())
  raw[len(raw) // 2] ^= 0xFF  # same size: only a checksum can tell
  open(path, "wb").write(bytes(raw))
  assert not srcs["latin"].cache.verify(unit)
  text.prepare(_config(tree, tmp_path), verify=True)
  assert _digest(tmp_path) == ref


def test_changed_input_is_prepared_again_and_nothing_else(tree, tmp_path):
  import shutil
  mine = str(tmp_path / "tree")
  shutil.copytree(tree, mine)
  c = _config(mine, tmp_path / "c")
  text.prepare(c)
  plans = text._plan(c.data, text._specs(c.data))
  toks = text._tokenizers(c, plans, None)
  tc = cache.TokenCache(str(tmp_path / "c"), toks["latin"], c.data.val_fraction)
  jobs = lambda: [(u, tc) for u in text._plan(c.data, text._specs(c.data))["latin"]]  # noqa: E731
  assert cache.prepare_units(jobs(), str(tmp_path / "c"), 1) == []
  with open(os.path.join(mine, "latin", "doc03.txt"), "a") as f:
    f.write("one more line\n")
  done = cache.prepare_units(jobs(), str(tmp_path / "c"), 1)
  assert len(done) == 1  # the one unit that holds the changed file
  assert os.path.join(mine, "latin", "doc03.txt") in [p.path for p in done[0][0].parts]


def test_another_tokenizer_gets_its_own_cache(tree, reference, tmp_path):
  c = _config(tree, tmp_path, vocab_size=420)
  srcs = text.prepare(c)
  ref_dirs = {k.split("/")[1] for k in reference[1]}
  mine = {k.split("/")[1] for k in _digest(tmp_path)}
  assert mine and not mine & ref_dirs
  assert srcs["code"].cache.tok.vocab_size == 420


def test_held_out_by_content_and_copies_across_the_split_dropped_and_counted(tmp_path):
  """Exact copies always fall on the same side; a held-out document whose whitespace/case
  variant is in training is dropped and counted."""
  base = make_docs("latin", 120, 100, seed=3)
  docs = list(base) + list(base[:10])  # exact copies
  variants = 0
  for d in base[::2]:
    if cache.val_score(d.encode()) < 0.1:  # held out: plant a variant that lands in training
      for extra in range(1, 50):
        v = d.upper() + " " * extra
        if cache.val_score(v.encode()) >= 0.1:
          docs.append(v)
          variants += 1
          break
  assert variants >= 2
  src_dir = tmp_path / "s"
  src_dir.mkdir()
  for i, d in enumerate(docs):
    (src_dir / f"d{i:03d}.txt").write_text(d)
  c = base_config()
  c.variant = "spec_opt"
  text.add_text_data(c, {"s": text.source(str(src_dir))})
  c.data.update(source_vocab_size=320, cache_dir=str(tmp_path / "c"), val_fraction=0.1,
                workers=1)
  src = text.prepare(c)["s"]
  val = [d for d in docs if cache.val_score(d.encode()) < 0.1]
  train = [d for d in docs if cache.val_score(d.encode()) >= 0.1]
  train_norm = {cache.normalized_hash(d) for d in train}
  copies = [v for v in val if cache.normalized_hash(v) in train_norm]
  kept = {cache.normalized_hash(v) for v in val} - train_norm
  assert src.index["train_docs"] == len(train)
  assert src.index["val_dropped_copies"] == len(copies) >= variants
  assert src.index["val_docs"] == len(kept)
  assert src.index["val_dropped_repeats"] == len(val) - len(copies) - len(kept) > 0
  assert not {d for d in val} & {d for d in train}  # exact copies never straddle


def test_a_full_disk_names_the_fix_and_leaves_the_cache_usable(tree, reference, tmp_path,
                                                               monkeypatch):
  _, ref, _ = reference
  c = _config(tree, tmp_path)
  real, calls = cache._write_unit, [0]

  def filling(*a, **k):
    calls[0] += 1
    if calls[0] == 4:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real(*a, **k)
  monkeypatch.setattr(cache, "_write_unit", filling)
  with pytest.raises(DataError, match=r"source '\w+': the disk filled while writing the token "
                     r"cache in .* Fix: free space or set data.cache_dir to a bigger disk, then "
                     r"run again: finished units are kept"):
    text.prepare(c)
  assert not glob.glob(os.path.join(tmp_path, "tokens", "*", "units", "*.tmp*"))
  monkeypatch.setattr(cache, "_write_unit", real)
  text.prepare(c)
  assert _digest(tmp_path) == ref


def test_cache_written_by_another_tokenizer_is_refused(tree, reference, tmp_path):
  _, _, srcs = reference
  src = srcs["code"]
  unit = src.units[0]
  m = src.cache.paths(unit.key())["manifest"]
  import json
  data = json.load(open(m))
  os.makedirs(tmp_path, exist_ok=True)
  saved = open(m).read()
  try:
    data["cache"] = "0" * 32
    json.dump(data, open(m, "w"))
    with pytest.raises(DataError, match=r"source 'code': cache shard .* was written for cache 0+ "
                       r"\(another tokenizer or val_fraction\), not this run's .* Fix: delete"):
      src.cache.manifest(unit)
  finally:
    open(m, "w").write(saved)


def test_units_split_documents_the_same_way_for_every_tokenizer(tree):
  spec = {"path": os.path.join(tree, "code")}
  a = documents.plan("code", spec, 20_000)
  b = documents.plan("code", spec, 20_000)
  assert [u.key() for u in a] == [u.key() for u in b]


def test_another_val_fraction_gets_its_own_cache_and_split(tree, reference, tmp_path):
  ref_dir, _, ref_srcs = reference
  srcs = text.prepare(_config(tree, ref_dir, val_fraction=0.3))
  assert srcs["latin"].cache.dir != ref_srcs["latin"].cache.dir
  assert srcs["latin"].index["val_docs"] > ref_srcs["latin"].index["val_docs"]


def test_only_a_sources_first_unit_must_hold_one_out(tmp_path):
  """Units of one document each: the first holds it out if none falls under val_fraction, the
  others keep theirs in training (no silent loss of training text)."""
  (tmp_path / "s").mkdir()
  docs = [f"document {i} " + "word " * 120 for i in range(8)]  # ~610 bytes each
  for i, d in enumerate(docs):
    (tmp_path / "s" / f"d{i}.txt").write_text(d)
  lines = "".join(make_docs("latin", 20, 400)).split("\n")
  tok = tokenizers.train_sentencepiece(lines, str(tmp_path / "t.model"), 300, "test")
  c = base_config()
  c.variant = "spec_opt"
  text.add_text_data(c, {"s": text.source(str(tmp_path / "s"), tokenizer=tok)})
  c.data.update(cache_dir=str(tmp_path / "c"), unit_mb=0.0005, workers=1, val_fraction=0.01)
  src = text.prepare(c)["s"]
  assert len(src.units) == 8
  held = sum(cache.val_score(d.encode()) < 0.01 for d in docs)
  assert src.index["val_docs"] == max(held, 1) and src.index["train_docs"] == 8 - max(held, 1)


def test_damaged_index_is_rebuilt_and_a_damaged_shard_named(tree, tmp_path):
  c = _config(tree, tmp_path)
  src = text.prepare(c)["code"]
  index = glob.glob(os.path.join(src.cache.dir, "sources", "*.json"))
  for path in index:
    open(path, "w").write('{"trunc')
  again = text.prepare(c)["code"]
  assert again.index == src.index  # derived data: built again
  npz = src.cache.paths(src.units[0].key())["npz"]
  size = os.path.getsize(npz)
  open(npz, "wb").write(b"\0" * size)  # same size: passes the cheap check, fails to load
  for path in glob.glob(os.path.join(src.cache.dir, "sources", "*")):
    os.remove(path)
  with pytest.raises(DataError, match=r"source 'code': cache shard .*\.npz .* is damaged .* Fix: "
                     r"run --mode=prepare"):
    text.prepare(c)
  text.prepare(c, verify=True)  # the checksum finds it and makes it again


# Runs `python -m dept_jax.main ARGS` with the worker pool's results wrapped so that the process
# sends itself SIGTERM as the first unit comes back: the signal always lands mid-preparation,
# however fast or slow the machine (waiting for a unit file from outside raced the last unit).
_TERM_AFTER_FIRST_UNIT = """import concurrent.futures, os, runpy, signal, sys
pool_map = concurrent.futures.ProcessPoolExecutor.map
def map_then_term(self, fn, *iterables, **kw):
  for i, result in enumerate(pool_map(self, fn, *iterables, **kw)):
    if i == 0:
      os.kill(os.getpid(), signal.SIGTERM)
    yield result
concurrent.futures.ProcessPoolExecutor.map = map_then_term
sys.argv = ["dept_jax.main", *sys.argv[1:]]
runpy.run_module("dept_jax.main", run_name="__main__")"""


def test_sigterm_while_preparing_stops_in_one_line_and_leaves_no_worker(tmp_path):
  big = write_tree(str(tmp_path / "big"), n_docs=40, words=4000)
  cmd = [sys.executable, "-c", _TERM_AFTER_FIRST_UNIT, "--mode=prepare", "--config",
         f"configs/folders.py:{big}", "--config.variant=trim", "--config.data.vocab_size=400",
         "--config.data.unit_mb=0.01", "--config.data.workers=2",
         f"--config.data.cache_dir={tmp_path / 'c'}"]
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, start_new_session=True)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out[-3000:]
  assert "SIGTERM: stopped while tokenizing the data; the shards finished so far are kept" in out
  assert "Traceback" not in out
  units = glob.glob(os.path.join(tmp_path, "c", "tokens", "*", "units", "*.json"))
  assert units, "no unit finished before the stop"
  import time
  for _ in range(100):  # no worker (nor multiprocessing's tracker) outlives the run for long
    try:
      os.killpg(proc.pid, 0)
    except ProcessLookupError:
      break
    time.sleep(0.1)
  with pytest.raises(ProcessLookupError):
    os.killpg(proc.pid, 0)
