"""Readers, validation split, tokenizers, TRIM maps, configs/folders.py and every bad input."""
import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from dept_jax import evaluation, model
from dept_jax.config_lib import base_config
from dept_jax.data import build_data, sources, text, tokenizers
from dept_jax.data.sources import DataError
from test_data_fixtures import make_docs, write_tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(named, variant="spec_opt", **data):
  c = base_config()
  c.variant, c.batch_size, c.seq_len = variant, 4, 32
  text.add_text_data(c, named)
  c.data.vocab_size, c.data.source_vocab_size = 400, 320
  c.data.eval_batches = 2
  for k, v in data.items():
    c.data[k] = v
  return c


def _folders(arg):
  spec = importlib.util.spec_from_file_location("folders_cfg", os.path.join(ROOT, "configs",
                                                                             "folders.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
  return write_tree(str(tmp_path_factory.mktemp("corpus")))


@pytest.fixture(scope="module")
def spec_opt_run(tree, tmp_path_factory):
  c = _folders(tree)
  c.batch_size, c.seq_len, c.data.source_vocab_size, c.data.eval_batches = 4, 32, 320, 2
  wd = str(tmp_path_factory.mktemp("wd"))
  return c, wd, build_data(c, wd)


# ------------------------------------------------------------------ readers
def test_jsonl_parquet_and_text_files_each_give_documents(tmp_path):
  docs = ["first doc é", "second doc", "third"]
  with open(tmp_path / "a.jsonl", "w") as f:
    for d in docs:
      f.write(json.dumps({"body": d}) + "\n")
  got = sources.read_documents("j", {"path": str(tmp_path / "a.jsonl"), "field": "body"})
  assert got.texts == docs
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.table({"text": docs}), tmp_path / "a.parquet")
  assert sources.read_documents("p", {"path": str(tmp_path / "a.parquet")}).texts == docs
  (tmp_path / "t").mkdir()
  for i, d in enumerate(docs):
    (tmp_path / "t" / f"{i}.md").write_text(d)
  (tmp_path / "t" / "blob.bin").write_bytes(b"\0\1\2binary")
  got = sources.read_documents("t", {"path": str(tmp_path / "t")})
  assert got.texts == docs and got.skipped_files == 1
  assert sources.read_documents("g", {"path": str(tmp_path / "t" / "*.md")}).texts == docs


def test_undecodable_bytes_are_replaced_and_counted(tmp_path):
  (tmp_path / "bad.txt").write_bytes(b"ok \xff\xfe text \xc3")
  got = sources.read_documents("b", {"path": str(tmp_path / "bad.txt")})
  assert got.replaced_bytes == 3
  assert got.texts == ["ok \ufffd\ufffd text \ufffd"]


def test_validation_is_whole_documents_disjoint_and_deterministic():
  docs = sources.Documents("v", [f"doc {i}" for i in range(40)])
  tr, va = sources.split_validation(docs, 0.1, seed=0)
  assert len(va) == 4 and not set(tr) & set(va) and len(tr) + len(va) == 40
  assert sources.split_validation(docs, 0.1, seed=0) == (tr, va)
  assert sources.split_validation(docs, 0.1, seed=1)[1] != va


# ------------------------------------------------------------------ bad input
def test_missing_path(tmp_path):
  with pytest.raises(DataError, match=r"source 'gone': path '.*nowhere' does not exist\. Fix: "
                     r"set config.data.sources.gone.path"):
    sources.read_documents("gone", {"path": str(tmp_path / "nowhere")})


def test_source_with_no_text(tmp_path):
  (tmp_path / "empty.txt").write_text("   \n")
  with pytest.raises(DataError, match=r"source 'e': no text found .* Fix: point the source"):
    sources.read_documents("e", {"path": str(tmp_path)})


def test_json_line_without_the_field(tmp_path):
  (tmp_path / "x.jsonl").write_text('{"text": "fine"}\n{"content": "no text key"}\n')
  with pytest.raises(DataError, match=r"source 'j': .*x.jsonl line 2 has no field 'text' "
                     r"\(has: content\)\. Fix: set config.data.sources.j.field"):
    sources.read_documents("j", {"path": str(tmp_path / "x.jsonl")})


def test_source_smaller_than_one_batch(tree, tmp_path):
  (tmp_path / "tiny").mkdir()
  (tmp_path / "tiny" / "a.txt").write_text("a few words")
  (tmp_path / "tiny" / "b.txt").write_text("and a few more")
  c = _config({"latin": text.source(os.path.join(tree, "latin")),
               "tiny": text.source(str(tmp_path / "tiny"))}, variant="glob")
  with pytest.raises(DataError, match=r"source 'tiny': has \d+ training windows .*fewer than one "
                     r"batch \(batch_size=4\)\. Fix: add text"):
    build_data(c, str(tmp_path / "wd"))


def test_tokenizer_whose_size_does_not_match(spec_opt_run, tmp_path):
  c, wd, _ = spec_opt_run
  c2 = _folders(os.path.dirname(c.data.sources.latin.path))
  c2.batch_size, c2.seq_len = 4, 32
  c2.data.source_vocab_size = 512  # the workdir holds 320-piece tokenizers
  with pytest.raises(DataError, match=r"tokenizer for source 'code': .* has 320 pieces but "
                     r"config.data.source_vocab_size=512\. Fix: set data.source_vocab_size=320"):
    build_data(c2, wd)


# ------------------------------------------------------------------ tokenizers
def test_per_source_tokenizers_differ_and_fit_their_source_better(spec_opt_run, tree, tmp_path):
  c, wd, bundle = spec_opt_run
  assert bundle.names == ["code", "cyrillic", "latin"] and bundle.global_vocab_size is None
  assert all(os.path.exists(p) for p in bundle.tokenizers.values())
  models = [open(bundle.tokenizers[n], "rb").read() for n in bundle.names]
  assert len(set(models)) == 3
  # A global tokenizer of the same size, trained on all three sources.
  lines = [ln for k in bundle.names for ln in tokenizers.sample_lines(
      make_docs(k, 12, 1500), 0)]
  tokenizers.train(lines, str(tmp_path / "g.model"), 320, "test")
  glob_sp = tokenizers.load(str(tmp_path / "g.model"), 320, "test", "x")
  for name in bundle.names:
    held_out = make_docs(name, 3, 1500, seed=99)
    own = tokenizers.load(bundle.tokenizers[name], 320, name, "x")
    n_own = sum(map(len, tokenizers.encode(own, held_out)))
    n_glob = sum(map(len, tokenizers.encode(glob_sp, held_out)))
    assert n_own < 0.9 * n_glob, (name, n_own, n_glob)  # fewer tokens per byte


def test_tokenizers_are_reused_and_a_user_model_is_copied_in(spec_opt_run, tmp_path):
  c, wd, bundle = spec_opt_run
  mtimes = {n: os.path.getmtime(p) for n, p in bundle.tokenizers.items()}
  again = build_data(c, wd)
  assert {n: os.path.getmtime(p) for n, p in again.tokenizers.items()} == mtimes
  np.testing.assert_array_equal(again.streams[0].next_rows(4),  # same seed: same rows
                                build_data(c, wd).streams[0].next_rows(4))
  c.data.sources.latin.tokenizer = bundle.tokenizers["latin"]
  wd2 = str(tmp_path / "wd2")
  other = build_data(c, wd2)
  assert open(os.path.join(wd2, "tokenizers", "latin.model"), "rb").read() == \
      open(bundle.tokenizers["latin"], "rb").read()
  assert other.streams[2].vocab_size == 320


def test_streams_follow_the_contract(spec_opt_run):
  c, _, bundle = spec_opt_run
  assert c.data.num_sources == len(bundle.streams) == 3
  for s in bundle.streams:
    rows = s.next_rows(c.batch_size)
    assert rows.shape == (4, 33) and rows.dtype == np.int32
    assert 0 <= rows.min() and rows.max() < s.vocab_size
    ev = s.eval_batches()
    # The eval text is ~eval_batches x batch x seq_len x 3 bytes; its batch count follows the
    # tokenizer's bytes per token.
    assert len(ev) >= 1 and all(b["tokens"].shape == (4, 33) for b in ev)
    assert ev[0]["bytes"] > 0
    json.dumps(s.get_state())


# ------------------------------------------------------------------ TRIM / SPEC maps
def test_trim_local_ids_round_trip_to_global(tree, tmp_path):
  named = {k: text.source(os.path.join(tree, k)) for k in ("code", "latin")}
  c = _config(named, variant="trim")
  b = build_data(c, str(tmp_path))
  G = c.data.vocab_size
  assert b.global_vocab_size == G and b.local_to_global.shape[0] == 2
  for k, (local, glob) in enumerate(zip(b.streams, b.global_streams)):
    l2g = b.local_to_global[k]
    size = local.vocab_size
    assert size < G and (l2g[:size] >= 0).all() and (l2g[size:] == -1).all()
    assert (np.diff(l2g[:size]) > 0).all()  # sorted, no repeats
    rows_local, rows_global = local.next_rows(8), glob.next_rows(8)
    np.testing.assert_array_equal(l2g[rows_local], rows_global)  # local -> global
    np.testing.assert_array_equal(local.id_map[rows_global], rows_local)  # global -> local
  # The code source and the latin source own different parts of the global vocabulary.
  a, z = (set(b.local_to_global[k][:b.streams[k].vocab_size]) for k in range(2))
  assert a != z


# ------------------------------------------------------------------ configs/folders.py
def test_folders_config_makes_one_source_per_subfolder(tree):
  c = _folders(tree)
  assert list(c.data.sources.keys()) == ["code", "cyrillic", "latin"]
  assert c.data.num_sources == 3 and c.data.kind == "text"
  c.data.sources.latin.weight = 2.0  # what --config.data.sources.latin.weight=2 does
  assert c.data.sources.latin.weight == 2.0


def test_folders_config_on_a_missing_folder(tmp_path):
  with pytest.raises(DataError, match="is not a folder"):
    _folders(str(tmp_path / "nope"))


def test_two_hosts_read_disjoint_windows(spec_opt_run):
  c, wd, _ = spec_opt_run
  seen, evals = [], []
  for index in (0, 1):
    c.data.shard_index, c.data.shard_count = index, 2
    s = build_data(c, wd).streams[0]
    seen.append({tuple(r) for r in s.next_rows(len(range(index, s.windows, 2)))})
    evals.append(s.eval_batches())
  c.data.shard_index, c.data.shard_count = -1, -1
  full = build_data(c, wd).streams[0]
  assert not seen[0] & seen[1]
  # Eval is not sharded: every host scores the same held-out rows (jit inputs must agree).
  assert len(evals[0]) == len(evals[1]) > 0
  for a, b in zip(*evals):
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    assert a["bytes"] == b["bytes"]
  assert seen[0] | seen[1] == {tuple(r) for r in full.next_rows(full.windows)}


def test_eval_text_spans_all_held_out_docs_and_counts_their_bytes(spec_opt_run):
  _, _, bundle = spec_opt_run
  sp = tokenizers.load(bundle.tokenizers["latin"], 320, "latin", "x")
  other = tokenizers.load(bundle.tokenizers["code"], 320, "code", "x")
  val = make_docs("latin", 10, 600, seed=5)
  whole = text._eval_chunks(sp, val, 10**9, seed=0)  # budget beyond the text: everything, exactly
  assert sum(nb for _, nb, _ in whole) == sum(len(v.encode("utf-8")) for v in val)
  assert sum(last for _, _, last in whole) == 10
  few = text._eval_chunks(sp, val, 10 * 300, seed=0)  # 300 bytes each: a part of every doc
  assert sum(last for _, _, last in few) == 10
  assert 3000 - 10 * 4 <= sum(nb for _, nb, _ in few) <= 3000
  # The text is chosen before tokenizing: another tokenizer scores exactly the same bytes.
  assert text.eval_texts(val, 3000, seed=0) == text.eval_texts(val, 3000, seed=0)
  again = text._eval_chunks(other, val, 10 * 300, seed=0)
  assert [nb for _, nb, _ in again] == [nb for _, nb, _ in few]
  assert sum(len(t) for t, _, _ in again) != sum(len(t) for t, _, _ in few)
  decoded = "".join(sp.decode(t.tolist()) for t, _, _ in few)
  assert decoded == "".join(t for t, _ in text.eval_texts(val, 3000, seed=0))


def test_trim_min_count_drops_rare_ids_to_unk(tree, tmp_path):
  named = {k: text.source(os.path.join(tree, k)) for k in ("code", "latin")}
  full = build_data(_config(named, variant="spec"), str(tmp_path))
  rare = build_data(_config(named, variant="spec", min_count=200), str(tmp_path))
  for a, b, l2g in zip(full.streams, rare.streams, rare.local_to_global):
    assert b.vocab_size < a.vocab_size
    unk_local = int(np.searchsorted(l2g[:b.vocab_size], 0))
    assert l2g[unk_local] == 0  # <unk> is always owned
    glob_ids = b.stream[:4096]  # a stream keeps global ids; id_map gives what it emits
    local = b.id_map[glob_ids]
    kept = np.isin(glob_ids, l2g[:b.vocab_size])
    assert (~kept).any() and kept.any()
    assert (local[~kept] == unk_local).all() and (l2g[local[kept]] == glob_ids[kept]).all()


def test_trim_eval_reports_the_share_of_targets_it_scores_as_unk(tree, tmp_path):
  """With min_count high, TRIM/SPEC map many held-out tokens to <unk>; the eval batches count them
  (targets only, padding and real <unk>s excluded) and the evaluator reports their share."""
  named = {k: text.source(os.path.join(tree, k)) for k in ("code", "latin")}
  b = build_data(_config(named, variant="spec", min_count=200), str(tmp_path))
  s = b.streams[0]
  owned = set(b.local_to_global[0][:s.vocab_size].tolist())
  rows_global, _ = s._eval  # held-out rows in global (tokenizer) ids
  targets = rows_global[:, 1:]
  real = targets[targets >= 0]
  expected = int(sum(1 for t in real.tolist() if t not in owned and t != s.unk_id))
  batches = s.eval_batches()
  assert expected > 0 and sum(x["unowned_targets"] for x in batches) == expected
  cfg = base_config().model
  body = model.init_body(cfg, jax.random.key(0))
  embed = model.init_embed(cfg, s.vocab_size, jax.random.key(1))
  res = evaluation.evaluate_source(body, embed, s.vocab_size, cfg, batches)
  assert res["tokens"] == real.size
  np.testing.assert_allclose(res["unowned_rate"], expected / real.size)
  # SPEC-OPT streams emit their own ids: nothing is unowned, so no rate is reported.
  full = build_data(_config(named), str(tmp_path / "opt"))
  assert "unowned_rate" not in evaluation.evaluate_source(
      body, model.init_embed(cfg, full.streams[0].vocab_size, jax.random.key(1)),
      full.streams[0].vocab_size, cfg, full.streams[0].eval_batches())
