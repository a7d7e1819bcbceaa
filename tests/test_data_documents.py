"""Reading sources: formats, documents, units of work, and every bad input."""
import json
import os

import numpy as np
import pytest

from dept_jax.data import documents
from dept_jax.data.base import DataError


def _docs(name, spec, unit_bytes=64 << 20):
  stats = documents.ReadStats()
  out = [d for u in documents.plan(name, spec, unit_bytes) for d in documents.read_unit(u, stats)]
  return out, stats


def test_jsonl_parquet_text_files_and_globs_each_give_documents(tmp_path):
  docs = ["first doc é", "second doc", "third"]
  with open(tmp_path / "a.jsonl", "w") as f:
    for d in docs:
      f.write(json.dumps({"body": d}) + "\n")
  assert _docs("j", {"path": str(tmp_path / "a.jsonl"), "field": "body"})[0] == docs
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.table({"text": docs}), tmp_path / "a.parquet", row_group_size=1)
  assert _docs("p", {"path": str(tmp_path / "a.parquet")})[0] == docs
  (tmp_path / "t").mkdir()
  for i, d in enumerate(docs):
    (tmp_path / "t" / f"{i}.md").write_text(d)
  (tmp_path / "t" / "blob.bin").write_bytes(b"\0\1\2binary")
  got, stats = _docs("t", {"path": str(tmp_path / "t")})
  assert got == docs and stats.skipped_files == 1
  assert _docs("g", {"path": str(tmp_path / "t" / "*.md")})[0] == docs


def test_undecodable_bytes_are_replaced_and_counted(tmp_path):
  (tmp_path / "d").mkdir()
  (tmp_path / "d" / "bad.txt").write_bytes(b"ok \xff\xfe text \xc3")
  (tmp_path / "d" / "good.txt").write_text("fine")
  got, stats = _docs("b", {"path": str(tmp_path / "d")})
  assert stats.replaced == 3 and got == ["ok \ufffd\ufffd text \ufffd", "fine"]


def test_one_big_file_is_split_at_blank_lines_and_long_documents_into_bounded_pieces(tmp_path):
  paras = [f"paragraph {i} " + "word " * (i % 7 + 1) for i in range(50)]
  (tmp_path / "corpus.txt").write_text("\n\n".join(paras) + "\n")
  got, _ = _docs("c", {"path": str(tmp_path / "corpus.txt")})
  assert [d.strip() for d in got] == [p.strip() for p in paras]
  line = ("a long line without breaks " * 400).strip()  # ~10.8 KB, no blank line
  (tmp_path / "one.txt").write_text(line)
  got, _ = _docs("o", {"path": str(tmp_path / "one.txt"), "max_doc_bytes": 1000})
  assert "".join(got) == line and len(got) >= 11
  assert all(len(d.encode()) <= 1000 for d in got)
  assert all(d.endswith(" ") for d in got[:-1])  # cut after a space, not inside a word


def test_pieces_never_split_a_character():
  text = "日本語" * 1000
  got = documents.pieces(text, 1000)
  assert "".join(got) == text and all(len(p.encode()) <= 1000 for p in got)


def test_a_big_file_becomes_byte_ranges_cut_at_line_ends_that_cover_it_exactly(tmp_path):
  lines = [f"line {i} " + "x" * (i % 50) for i in range(4000)]
  path = tmp_path / "big.jsonl"
  path.write_text("".join(json.dumps({"text": ln}) + "\n" for ln in lines))
  units = documents.plan("b", {"path": str(path)}, unit_bytes=20_000)
  ranges = [(u.parts[0].start, u.parts[0].stop) for u in units]
  assert len(units) > 5 and ranges[0][0] == 0 and ranges[-1][1] == path.stat().st_size
  assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
  raw = path.read_bytes()
  assert all(raw[s - 1:s] == b"\n" for s, _ in ranges[1:])
  got = [d for u in units for d in documents.read_unit(u, documents.ReadStats())]
  assert got == lines


def test_small_files_share_a_unit_and_a_changed_file_changes_only_its_units_key(tmp_path):
  for i in range(30):
    (tmp_path / f"f{i:02d}.txt").write_text(f"file {i} " * 200)
  spec = {"path": str(tmp_path)}
  before = documents.plan("s", spec, unit_bytes=5_000)
  assert 1 < len(before) < 30 and sum(len(u.parts) for u in before) == 30
  assert [u.key() for u in before] == [u.key() for u in documents.plan("s", spec, 5_000)]
  target = tmp_path / "f20.txt"
  target.write_text("changed " * 200)
  os.utime(target, ns=(1, 1))
  after = documents.plan("s", spec, unit_bytes=5_000)
  changed = [a.key() != b.key() for a, b in zip(before, after)]
  owner = next(i for i, u in enumerate(before) if any(p.path == str(target) for p in u.parts))
  assert changed == [i == owner for i in range(len(before))]


# ------------------------------------------------------------------ bad input
def test_missing_path(tmp_path):
  with pytest.raises(DataError, match=r"source 'gone': path '.*nowhere' does not exist\. Fix: "
                     r"set config.data.sources.gone.path"):
    documents.plan("gone", {"path": str(tmp_path / "nowhere")})


def test_json_line_without_the_field_or_not_json(tmp_path):
  (tmp_path / "x.jsonl").write_text('{"text": "fine"}\n{"content": "no text key"}\n')
  with pytest.raises(DataError, match=r"source 'j': .*x.jsonl line 2 has no field 'text' "
                     r"\(has: content\)\. Fix: set config.data.sources.j.field"):
    _docs("j", {"path": str(tmp_path / "x.jsonl")})
  (tmp_path / "y.jsonl").write_text('{"text": "fine"}\nnot json\n')
  with pytest.raises(DataError, match=r"y.jsonl line 2 is not valid JSON"):
    _docs("j", {"path": str(tmp_path / "y.jsonl")})


def test_unreadable_file_and_symlink_loop_name_the_file(tmp_path):
  (tmp_path / "d").mkdir()
  (tmp_path / "d" / "ok.txt").write_text("fine")
  os.symlink(tmp_path / "d" / "loop_a", tmp_path / "d" / "loop_b")
  os.symlink(tmp_path / "d" / "loop_b", tmp_path / "d" / "loop_a")
  with pytest.raises(DataError, match=r"source 'l': cannot read .*loop_a: .*Fix: fix the file's "
                     r"permissions or remove it \(a broken or looping symbolic link"):
    documents.plan("l", {"path": str(tmp_path / "d")})


def test_linked_folders_are_not_followed(tmp_path):
  (tmp_path / "d" / "sub").mkdir(parents=True)
  (tmp_path / "d" / "sub" / "a.txt").write_text("text")
  os.symlink(tmp_path / "d", tmp_path / "d" / "sub" / "back")  # a folder loop
  assert documents.list_files("s", str(tmp_path / "d")) == [str(tmp_path / "d" / "sub" / "a.txt")]


def test_unknown_format_and_split(tmp_path):
  with pytest.raises(DataError, match=r"unknown format 'csv'"):
    documents.plan("u", {"path": str(tmp_path), "format": "csv"})
  with pytest.raises(DataError, match=r"unknown split_docs 'lines'"):
    documents.plan("u", {"path": str(tmp_path), "split_docs": "lines"})


def test_keys_ignore_the_source_name():
  part = documents.Part("/x", 0, 10, "10:1")
  a = documents.Unit("a", "text", (part,))
  b = documents.Unit("b", "text", (part,))
  assert a.key() == b.key() and len(a.key()) == 32
  assert documents.Unit("a", "text", (part,), max_doc_bytes=10).key() != a.key()
  np.testing.assert_equal(documents.file_format("x.JSONL", "auto"), "jsonl")


def test_json_lines_longer_than_a_megabyte_are_never_cut(tmp_path):
  docs = [("word " * 300_000).strip() + f" {i}" for i in range(4)]  # 1.5 MB lines
  path = tmp_path / "books.jsonl"
  path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
  units = documents.plan("b", {"path": str(path)}, unit_bytes=1 << 20)
  assert len(units) > 1
  got = [d for u in units for d in documents.read_unit(u, documents.ReadStats())]
  assert "".join(got) == "".join(docs)  # every line whole (then cut into bounded pieces)


def test_a_folders_files_are_whole_documents_with_their_blank_lines(tmp_path):
  """Only a lone file or one of a unit's size is split at blank lines: a folder of source code
  keeps its formatting, and small files next to big ones stay in training."""
  (tmp_path / "s").mkdir()
  big = "def f():\n    return 1\n\n\n" * 3000  # 72 KB with blank lines
  for i in range(6):
    (tmp_path / "s" / f"f{i}.py").write_text(big if i % 2 else f"small {i}\n\nfile\n")
  units = documents.plan("s", {"path": str(tmp_path / "s")})
  assert len(units) == 1 and all(p.split == "file" for p in units[0].parts)
  got = list(documents.read_unit(units[0], documents.ReadStats()))
  assert got[0] == "small 0\n\nfile\n" and "".join(got[1:3]) == big
  assert units[0].holds_out_one


def test_json_files_are_text_gzip_is_read_and_a_byte_order_mark_dropped(tmp_path):
  import gzip
  (tmp_path / "d").mkdir()
  (tmp_path / "d" / "package.json").write_text('{"name": "x",\n "version": "1"}\n')
  (tmp_path / "d" / "notes.txt.gz").write_bytes(gzip.compress("zipped text\n".encode()))
  (tmp_path / "d" / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + b'{"text": "after a bom"}\n')
  got, _ = _docs("d", {"path": str(tmp_path / "d")})
  assert sorted(got) == sorted(['{"name": "x",\n "version": "1"}\n', "zipped text\n",
                                "after a bom"])


def test_a_folder_name_with_glob_characters_is_taken_as_it_is(tmp_path):
  (tmp_path / "notes [v2]").mkdir()
  (tmp_path / "notes [v2]" / "a.txt").write_text("text")
  assert _docs("n", {"path": str(tmp_path / "notes [v2]")})[0] == ["text"]


def test_empty_folders_pipes_and_values_that_are_not_text(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match=r"source 'e': the folder .*empty' holds no files\. Fix"):
    documents.plan("e", {"path": str(tmp_path / "empty")})
  (tmp_path / "p").mkdir()
  os.mkfifo(tmp_path / "p" / "pipe")
  (tmp_path / "p" / "a.txt").write_text("text")
  assert _docs("p", {"path": str(tmp_path / "p")})[0] == ["text"]  # the pipe is never opened
  (tmp_path / "n.jsonl").write_text('{"text": null}\n{"text": "kept"}\n{"text": 12}\n')
  with pytest.raises(DataError, match=r"n.jsonl line 3: field 'text' holds a int, not text\. "
                     r"Fix: set config.data.sources.j.field"):
    _docs("j", {"path": str(tmp_path / "n.jsonl")})
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.table({"text": [1, 2, 3]}), tmp_path / "ints.parquet")
  with pytest.raises(DataError, match=r"column 'text' holds int64, not text\. Fix"):
    _docs("q", {"path": str(tmp_path / "ints.parquet")})
