"""Windows over cached tokens, epochs, exact eval bytes for any tokenizer, per-host step batches
and their resume."""
import itertools
import os

import numpy as np
import pytest

from dept_jax.data import feed, tokenizers, windows
from test_data_fixtures import make_docs, write_hf_tokenizer

EOS = 2


def _shards(tmp_path, streams, dtype=np.uint16):
  out = []
  for i, s in enumerate(streams):
    p = str(tmp_path / f"s{i}.tokens")
    np.asarray(s, dtype).tofile(p)
    out.append((p, len(s), np.dtype(dtype).name))
  return out


def test_windows_overlap_by_one_and_cross_shards(tmp_path):
  stream = np.arange(3, 40)
  src = windows.TokenWindows(_shards(tmp_path, [stream[:10], stream[10:11], stream[11:]]), 4)
  assert len(src) == (len(stream) - 1) // 4
  for i in range(len(src)):
    np.testing.assert_array_equal(src[i], stream[i * 4:i * 4 + 5])
  np.testing.assert_array_equal(src[len(src) + 2], src[2])  # indices wrap (grain repeats)


def test_an_epoch_is_a_permutation_and_the_next_epoch_another(tmp_path):
  src = windows.TokenWindows(_shards(tmp_path, [np.arange(3, 200)]), 8)
  n = len(src)
  ds = windows.training_windows(src, seed=1, name="s")
  first = [tuple(ds[i]) for i in range(n)]
  second = [tuple(ds[i]) for i in range(n, 2 * n)]
  every = {tuple(src[i]) for i in range(n)}
  assert set(first) == set(second) == every and len(set(first)) == n
  assert first != second
  assert first == [tuple(windows.training_windows(src, 1, "s")[i]) for i in range(n)]
  assert first != [tuple(windows.training_windows(src, 2, "s")[i]) for i in range(n)]
  mapped = windows.training_windows(src, 1, "s", id_map=np.arange(300) * 2)
  np.testing.assert_array_equal(mapped[5], ds[5] * 2)


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
  d = tmp_path_factory.mktemp("toks")
  texts = make_docs("latin", 20, 400) + make_docs("cyrillic", 20, 400) + ["日本語のテキスト"] * 5
  lines = [ln for t in texts for ln in t.split("\n") if ln]
  sp = tokenizers.train_sentencepiece(lines, str(d / "sp.model"), 400, "test")
  hf = write_hf_tokenizer(str(d / "tokenizer.json"), texts)
  return [tokenizers.load(sp), tokenizers.load(hf)]


def test_eval_bytes_of_a_text_equal_its_utf8_length_for_every_tokenizer(toks):
  docs = [" leading space", "mixed ка ло 日本語 and trailing  ", "x", "line\n\nbreaks\n"]
  total = sum(len(d.encode()) for d in docs)
  for tok in toks:
    enc = [(ids, ends, len(d.encode())) for d, (ids, ends) in
           zip(docs, tok.encode_with_ends(docs))]
    for (ids, _, _), d in zip(enc, docs):
      np.testing.assert_array_equal(ids, tok.encode([d])[0])
    rows, nbytes = windows.eval_rows(enc, tok.eos_id, 8, budget_bytes=10**9)
    assert nbytes.sum() == total and nbytes.dtype == np.int64, tok.kind
    flat = np.concatenate([rows[0]] + [r[1:] for r in rows[1:]])
    real = flat[flat >= 0]
    assert real[0] == tok.eos_id and (real == tok.eos_id).sum() == len(docs) + 1
    assert (flat[len(real):] == -1).all()


def test_a_budget_cut_ends_a_document_without_eos_and_counts_its_bytes(toks):
  tok = toks[0]
  docs = make_docs("latin", 3, 300, seed=4)
  enc = [(ids, ends, len(d.encode())) for d, (ids, ends) in zip(docs, tok.encode_with_ends(docs))]
  budget = enc[0][2] + enc[1][2] // 2
  rows, nbytes = windows.eval_rows(enc, tok.eos_id, 16, budget)
  flat = np.concatenate([rows[0]] + [r[1:] for r in rows[1:]])
  real = flat[flat >= 0]
  assert (real == tok.eos_id).sum() == 2  # before doc 0 and after it; none at the cut
  cut = len(real) - 1 - len(enc[0][0]) - 1
  assert 0 < cut < len(enc[1][0])
  assert nbytes.sum() == enc[0][2] + int(enc[1][1][cut - 1]) <= budget
  assert tok.decode(real[-cut:]) == docs[1].encode()[:int(enc[1][1][cut - 1])].decode()


def test_eval_batches_pad_to_constant_shape_and_sum_bytes():
  rows = np.arange(5 * 9).reshape(5, 9).astype(np.int32)
  got = windows.eval_batches(rows, np.arange(5, dtype=np.int64), 2)
  assert [b["tokens"].shape for b in got] == [(2, 9)] * 3
  assert [b["bytes"] for b in got] == [1, 5, 4] and (got[2]["tokens"][1] == -1).all()


# ------------------------------------------------------------------ per-host batches
class _Counter:
  """A window source that remembers which windows were read."""

  def __init__(self, n, L=4):
    self.n, self.L, self.read = n, L, []

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    self.read.append(i % self.n)
    return np.full((self.L + 1,), i % self.n, np.int32)


def _plain(src, seed=0):
  import grain
  return grain.MapDataset.source(src).shuffle(seed=seed).repeat()


def test_hosts_read_disjoint_windows_that_cover_each_epoch_once():
  B, steps = 4, 6  # 2 slots x 4 rows x 6 steps = one epoch of 24 windows per source
  sources = [_Counter(24), _Counter(24)]
  sched = feed.Schedule(lambda r: np.arange(2), 2, local_steps=3, total_steps=steps)
  boxes = [(slice(0, 2), slice(0, 2)), (slice(0, 2), slice(2, 4))]  # two hosts, half the rows
  seen = []
  for box in boxes:
    for s in sources:
      s.read.clear()
    wins = [_plain(s) for s in sources]
    for t in range(steps):
      b = feed.source_batch(wins, sched, [50, 60], B, box, t)
      assert b["inputs"].shape == (2, 2, 4) and (b["vocab_size"] == [50, 60]).all()
      assert (b["source_ids"] == [[0, 0], [1, 1]]).all()
    seen.append([list(s.read) for s in sources])
  for k in range(2):
    a, b = set(seen[0][k]), set(seen[1][k])
    assert not a & b and a | b == set(range(24)) and len(seen[0][k]) == 12


def test_sources_sitting_out_keep_their_position():
  """With 2 of 3 sources per round, a source's rows continue where it stopped."""
  rounds = {0: [0, 1], 1: [1, 2], 2: [0, 2]}
  sched = feed.Schedule(lambda r: np.asarray(rounds[r % 3]), 3, local_steps=2, total_steps=6)
  assert [sched.steps_before(0, t) for t in (0, 1, 4, 5)] == [0, 1, 2, 3]
  assert [sched.steps_before(2, t) for t in (2, 3, 4, 5)] == [0, 1, 2, 3]
  assert list(sched.slot_sources(3)) == [1, 2]


def test_batches_from_any_step_equal_an_uninterrupted_run(tmp_path):
  src = windows.TokenWindows(_shards(tmp_path, [np.arange(3, 3000) % 500]), 8)
  wins = [windows.training_windows(src, 0, "a"), windows.training_windows(src, 0, "b")]
  sched = feed.Schedule(lambda r: np.arange(2), 2, 5, 20)
  box = (slice(0, 2), slice(0, 4))
  fn = lambda t: feed.source_batch(wins, sched, [500, 500], 4, box, t)  # noqa: E731
  whole = list(feed.prefetched(fn, 0, 20, threads=2, buffer=3))
  resumed = list(feed.prefetched(fn, 13, 20, threads=2, buffer=3))
  assert len(whole) == 20
  for a, b in zip(whole[13:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  direct = [fn(t) for t in range(20)]
  for a, b in zip(whole, direct):
    np.testing.assert_array_equal(a["targets"], b["targets"])


def test_mixture_batches_follow_the_weights_and_name_each_rows_source():
  import grain
  parts = [_plain(_Counter(100)).map(lambda w, k=k: (w, k)) for k in range(3)]
  mix = grain.MapDataset.mix(parts, weights=[0.5, 0.3, 0.2])
  ids = np.concatenate([feed.mixture_batch(mix, 99, 10, (slice(0, 1), slice(0, 10)), t)
                        ["source_ids"][0] for t in range(30)])
  np.testing.assert_allclose(np.bincount(ids) / len(ids), [0.5, 0.3, 0.2], atol=0.02)


def test_host_box_of_a_real_mesh():
  import jax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  devs = np.asarray(jax.devices()[:8]).reshape(2, 4)
  sh = NamedSharding(Mesh(devs, ("source", "data")), P("source", "data", None))
  assert feed.host_box(sh, (2, 8, 16)) == (slice(0, 2), slice(0, 8), slice(0, 16))


def test_a_damaged_or_vanished_shard_stops_with_the_fix(tmp_path):
  from dept_jax.data.base import DataError
  shards = _shards(tmp_path, [np.arange(3, 200) % 90])
  src = windows.TokenWindows(shards, 8, "s", vocab_size=90)
  raw = bytearray(open(shards[0][0], "rb").read())
  raw[20:22] = (60000).to_bytes(2, "little")  # an id past the vocabulary
  open(shards[0][0], "wb").write(bytes(raw))
  with pytest.raises(DataError, match=r"source 's': the token cache shard .*s0.tokens is damaged "
                     r"or gone \(token id 60000 is past the vocabulary \(90\)\)\. Fix: run "
                     r"--mode=prepare"):
    src[1]
  open(shards[0][0], "wb").write(bytes(raw[:40]))
  with pytest.raises(DataError, match=r"\(\d+ of 9 tokens read\)"):
    src[5]
  os.remove(shards[0][0])
  with pytest.raises(DataError, match=r"damaged or gone \(No such file"):
    src[5]
