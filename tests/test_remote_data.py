"""Sources on gs:// read through etils.epath and fsspec, checked against an in-memory stand-in for
Google Cloud Storage (no network here): a gs:// folder of sources prepares exactly as the same files
on a local disk, and an object written again with the same size is prepared again."""
import importlib

import numpy as np
import pytest

from dept_jax.config_lib import base_config
from dept_jax.data import text, tokenizers
from dept_jax.data.base import DataError
from test_data_fixtures import make_docs, write_tree

fsspec = pytest.importorskip("fsspec")
from fsspec.implementations.memory import MemoryFileSystem  # noqa: E402


class FakeGCS(MemoryFileSystem):
  """gs:// kept in memory, reporting a `generation` per object as gcsfs does (it changes with
  every write)."""
  protocol = ("gs", "gcs")
  store: dict = {}
  pseudo_dirs = [""]

  def __init__(self, *args, finalize_on_close=False, **kwargs):  # etils passes gcsfs's option
    super().__init__(*args, **kwargs)

  def info(self, path, **kwargs):
    out = super().info(path, **kwargs)
    if out["type"] == "file":
      out["generation"] = str(int(out["created"].timestamp() * 1e6))
    return out


@pytest.fixture
def gcs():
  from etils import epath
  FakeGCS.store.clear()
  FakeGCS.pseudo_dirs[:] = [""]
  for protocol in FakeGCS.protocol:
    fsspec.register_implementation(protocol, FakeGCS, clobber=True)
  FakeGCS.clear_instance_cache()
  yield epath
  registry = importlib.import_module("fsspec.registry")  # (fsspec.registry is a read-only view)
  for protocol in FakeGCS.protocol:  # later tests get fsspec's own (lazy, gcsfs) entry back
    registry._registry.pop(protocol, None)


KINDS = ("latin", "code")


def _upload(epath, root):
  for kind in KINDS:
    for i, doc in enumerate(make_docs(kind, 6, 800)):
      path = epath.Path(f"{root}/{kind}/doc{i:02d}.txt")
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text(doc)


def _config(sources, cache_dir, variant="trim"):
  c = base_config()
  c.variant, c.batch_size, c.seq_len = variant, 4, 32
  text.add_text_data(c, sources)
  c.data.vocab_size, c.data.source_vocab_size = 400, 320
  c.data.cache_dir, c.data.unit_mb, c.data.workers = str(cache_dir), 0.002, 1
  return c


def test_a_gs_folder_of_sources_prepares_as_the_same_files_on_disk(gcs, tmp_path):
  _upload(gcs, "gs://bucket/corpus")
  local = write_tree(str(tmp_path / "local"), kinds=KINDS, n_docs=6, words=800)
  remote_sources = text.folder_sources("gs://bucket/corpus/")
  assert {k: s.path for k, s in remote_sources.items()} == {
      "code": "gs://bucket/corpus/code", "latin": "gs://bucket/corpus/latin"}
  remote = text.prepare(_config(remote_sources, tmp_path / "c1"))
  disk = text.prepare(_config(text.folder_sources(local), tmp_path / "c2"))
  for kind in KINDS:
    assert len(remote[kind].units) == len(disk[kind].units) > 1
    for key in ("tokens", "train_docs", "val_docs"):
      assert remote[kind].index[key] == disk[kind].index[key], (kind, key)
    np.testing.assert_array_equal(remote[kind].counts, disk[kind].counts)


def test_an_object_written_again_with_the_same_size_is_prepared_again(gcs, tmp_path, capsys):
  """With given tokenizers, exactly the rewritten object's units are tokenized again."""
  _upload(gcs, "gs://bucket/corpus")
  lines = "".join(make_docs("latin", 20, 400) + make_docs("code", 20, 400)).split("\n")
  tok = tokenizers.train_sentencepiece(lines, str(tmp_path / "t.model"), 300, "test")
  c = _config({k: text.source(f"gs://bucket/corpus/{k}", tokenizer=tok) for k in KINDS},
              tmp_path / "c", "spec_opt")
  before = text.prepare(c)
  victim = gcs.Path("gs://bucket/corpus/latin/doc03.txt")
  old = victim.read_text()
  new = old.translate(str.maketrans("ae", "ea"))  # same size, same line ends, other text
  assert new != old and len(new.encode()) == len(old.encode())
  victim.write_text(new)
  capsys.readouterr()
  after = text.prepare(c)
  assert after["latin"].key != before["latin"].key
  assert after["code"].key == before["code"].key
  out = capsys.readouterr().out
  redone = sum(any(p.path == str(victim) for p in u.parts) for u in after["latin"].units)
  assert redone == 2  # its two byte ranges (unit_mb is below the file's size)
  assert f"source 'latin': tokenized {redone} of {len(after['latin'].units)} units" in out, out
  assert "source 'code': tokenized" not in out, out


def test_a_missing_gs_folder_and_a_gs_tokenizer_say_what_to_do(gcs, tmp_path):
  with pytest.raises(DataError, match=r"'gs://bucket/none' is not a folder"):
    text.folder_sources("gs://bucket/none")
  _upload(gcs, "gs://bucket/corpus")
  c = _config({"latin": text.source("gs://bucket/corpus/latin",
                                    tokenizer="gs://bucket/tok.model")}, tmp_path / "c",
              "spec_opt")
  with pytest.raises(DataError, match=r"tokenizer 'gs://bucket/tok.model' is not a local file. "
                     r"Fix: copy it to a local disk"):
    text.prepare(c)
