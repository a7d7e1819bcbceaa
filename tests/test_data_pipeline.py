"""Packing, EOS boundaries, determinism, resume, host sharding and eval byte accounting."""
import json

import numpy as np
import pytest

from dept_jax.data import pipeline
from dept_jax.data.sources import DataError

EOS = 2


def _stream(n_docs=40, seed=0):
  rng = np.random.default_rng(1)
  docs = [rng.integers(3, 50, size=rng.integers(5, 30)).astype(np.int32) for _ in range(n_docs)]
  return pipeline.pack_stream(docs, EOS), docs


def _text_stream(stream, seed=0, shard=(0, 1), batch=4, L=8):
  ev = (np.zeros((0, L + 1), np.int32), np.zeros((0,)))
  return pipeline.TextStream("s", stream, 64, L, batch, seed, ev, shard=shard)


def test_pack_puts_eos_after_every_document_and_windows_overlap_by_one():
  s = pipeline.pack_stream([np.array([5, 6, 7]), np.array([8, 9])], EOS)
  np.testing.assert_array_equal(s, [5, 6, 7, 2, 8, 9, 2])
  assert pipeline.num_windows(len(s), 3) == 2
  np.testing.assert_array_equal(pipeline.window(s, 0, 3), [5, 6, 7, 2])
  np.testing.assert_array_equal(pipeline.window(s, 1, 3), [2, 8, 9, 2])


def test_one_epoch_is_a_permutation_of_all_windows_and_each_token_a_target_once():
  stream, docs = _stream()
  ts = _text_stream(stream)
  rows = ts.next_rows(ts.windows)
  L = ts.seq_len
  expect = {tuple(pipeline.window(stream, i, L)) for i in range(ts.windows)}
  assert {tuple(r) for r in rows} == expect and len(rows) == ts.windows
  assert (rows == EOS).sum() > 0
  # Targets (positions 1..L) of all windows together are stream[1 : windows*L + 1], once each.
  assert sum(r[1:].size for r in rows) == ts.windows * L
  # Next epoch is reshuffled, not a replay.
  again = ts.next_rows(ts.windows)
  assert {tuple(r) for r in again} == expect
  assert not np.array_equal(again, rows)


def test_same_seed_same_rows_other_seed_other_order():
  stream, _ = _stream()
  a = _text_stream(stream, seed=3).next_rows(12)
  b = _text_stream(stream, seed=3).next_rows(12)
  c = _text_stream(stream, seed=4).next_rows(12)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_resume_from_saved_state_gives_the_same_next_batch():
  stream, _ = _stream()
  run = _text_stream(stream, seed=5)
  for _ in range(7):
    run.next_rows(4)
  state = json.loads(json.dumps(run.get_state()))  # what a checkpoint stores
  expected = [run.next_rows(4) for _ in range(3)]
  resumed = _text_stream(stream, seed=5)
  resumed.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(resumed.next_rows(4), want)


def test_resume_with_other_data_is_refused():
  stream, _ = _stream()
  state = _text_stream(stream).get_state()
  other = _text_stream(stream[: len(stream) // 2])
  with pytest.raises(DataError, match="saved data position is for"):
    other.set_state(state)


def test_hosts_read_disjoint_windows_that_cover_the_source():
  stream, _ = _stream()
  a, b = _text_stream(stream, shard=(0, 2)), _text_stream(stream, shard=(1, 2))
  n = a.windows
  ra, rb = a.next_rows(len(range(0, n, 2))), b.next_rows(len(range(1, n, 2)))
  sa, sb = {tuple(r) for r in ra}, {tuple(r) for r in rb}
  assert not sa & sb
  assert sa | sb == {tuple(pipeline.window(stream, i, 8)) for i in range(n)}


def test_smaller_than_one_batch_names_the_source_and_fix():
  stream = pipeline.pack_stream([np.arange(3, 20, dtype=np.int32)], EOS)  # 18 tokens: 2 windows
  with pytest.raises(DataError, match=r"source 's'.*fewer than one batch \(batch_size=4\).*"
                     r"Fix: add text"):
    _text_stream(stream, batch=4)


def test_line_chunks_rejoin_to_the_text():
  text = "short line\n" * 50 + "x" * 5000 + "\nend"
  chunks = pipeline.line_chunks(text, 300)
  assert "".join(chunks) == text
  assert max(map(len, chunks)) <= 300


def test_eval_rows_count_every_byte_once_and_pad_with_minus_one():
  L = 8
  chunks = [(np.arange(3, 3 + n, dtype=np.int32), 10 * n, last)
            for n, last in [(5, False), (7, True), (11, True)]]
  rows, row_bytes = pipeline.eval_rows(chunks, EOS, L, max_rows=100)
  assert rows[0, 0] == EOS  # leading EOS: the first real token is a target
  assert row_bytes.sum() == pytest.approx(10 * (5 + 7 + 11))
  flat = np.concatenate([rows[0]] + [r[1:] for r in rows[1:]])
  n_real = 1 + 5 + 7 + 1 + 11 + 1
  assert (flat[n_real:] == -1).all() and (flat[:n_real] >= 0).all()
  # Capped: only 1 window of 8 targets; the cut chunk counts its bytes pro rata.
  rows, row_bytes = pipeline.eval_rows(chunks, EOS, L, max_rows=1)
  assert rows.shape == (1, L + 1)
  assert row_bytes.sum() == pytest.approx(50 + 70 * 3 / 7)
