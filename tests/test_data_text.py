"""Text sources end to end: tokenizers (trained, brought, Hugging Face), TRIM maps, the run's own
record, configs/folders.py and the bad inputs of a whole build."""
import importlib.util
import os

import jax
import numpy as np
import pytest

from dept_jax import evaluation, model
from dept_jax.config_lib import base_config
from dept_jax.data import build_data, documents, text, tokenizers
from dept_jax.data.base import DataError
from test_data_fixtures import make_docs, write_hf_tokenizer, write_tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(named, cache_dir, variant="spec_opt", **data):
  c = base_config()
  c.variant, c.batch_size, c.seq_len = variant, 4, 32
  text.add_text_data(c, named)
  c.data.vocab_size, c.data.source_vocab_size = 400, 320
  c.data.eval_batches, c.data.cache_dir, c.data.workers = 2, str(cache_dir), 1
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
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def spec_opt_run(tree, cache_dir, tmp_path_factory):
  c = _folders(tree)
  c.batch_size, c.seq_len, c.data.eval_batches = 4, 32, 2
  c.data.update(source_vocab_size=320, cache_dir=str(cache_dir), workers=1)
  wd = str(tmp_path_factory.mktemp("wd"))
  return c, wd, build_data(c, wd)


# ------------------------------------------------------------------ tokenizers
def test_per_source_tokenizers_differ_and_fit_their_source_better(spec_opt_run, tmp_path):
  c, wd, bundle = spec_opt_run
  assert bundle.names == ["code", "cyrillic", "latin"] and bundle.global_vocab_size is None
  assert sorted(os.listdir(os.path.join(wd, "tokenizers"))) == [
      "code.model", "cyrillic.model", "latin.model"]
  models = [open(bundle.tokenizers[n], "rb").read() for n in bundle.names]
  assert len(set(models)) == 3
  lines = [ln for k in bundle.names for ln in "".join(make_docs(k, 12, 1500)).split("\n") if ln]
  glob_tok = tokenizers.load(tokenizers.train_sentencepiece(lines, str(tmp_path / "g.model"),
                                                            320, "test"))
  for name in bundle.names:
    held_out = make_docs(name, 3, 1500, seed=99)
    own = tokenizers.load(bundle.tokenizers[name])
    n_own = sum(map(len, own.encode(held_out)))
    n_glob = sum(map(len, glob_tok.encode(held_out)))
    assert n_own < 0.9 * n_glob, (name, n_own, n_glob)  # fewer tokens per byte


def test_a_run_keeps_its_tokenizers_and_a_user_model_is_copied_in(spec_opt_run, tmp_path):
  c, wd, bundle = spec_opt_run
  mtimes = {n: os.path.getmtime(p) for n, p in bundle.tokenizers.items()}
  again = build_data(c, wd)
  assert {n: os.path.getmtime(p) for n, p in again.tokenizers.items()} == mtimes
  np.testing.assert_array_equal(again.sources[0].windows[5], bundle.sources[0].windows[5])
  c2 = _folders(os.path.dirname(c.data.sources.latin.path))
  c2.batch_size, c2.seq_len = 4, 32
  c2.data.update(source_vocab_size=324, cache_dir=c.data.cache_dir, workers=1)
  c2.data.sources.latin.tokenizer = bundle.tokenizers["latin"]
  wd2 = str(tmp_path / "wd2")
  other = build_data(c2, wd2)
  assert open(os.path.join(wd2, "tokenizers", "latin.model"), "rb").read() == \
      open(bundle.tokenizers["latin"], "rb").read()
  # A brought tokenizer sets the vocabulary, whatever source_vocab_size says.
  assert other.sources[2].vocab_size == 320 and other.sources[0].vocab_size == 324


def test_sources_follow_the_contract(spec_opt_run):
  c, _, bundle = spec_opt_run
  assert c.data.num_sources == len(bundle.sources) == 3
  for s in bundle.sources:
    rows = np.stack([s.windows[i] for i in range(c.batch_size)])
    assert rows.shape == (4, 33) and rows.dtype == np.int32
    assert 0 <= rows.min() and rows.max() < s.vocab_size
    ev = s.eval_batches
    assert len(ev) >= 1 and all(b["tokens"].shape == (4, 33) for b in ev)
    assert all(b["bytes"] > 0 for b in ev)


def test_global_tokenizer_sample_ignores_temperature(tree, cache_dir, tmp_path):
  named = {k: text.source(os.path.join(tree, k)) for k in ("code", "latin")}
  paths = []
  for tau in (0.0, 1.0):
    c = _config(named, cache_dir, variant="std", temperature=tau)
    paths.append(build_data(c, str(tmp_path / f"wd{tau}")).tokenizers["code"])
  assert open(paths[0], "rb").read() == open(paths[1], "rb").read()


def test_a_hugging_face_tokenizer_json_as_the_global_tokenizer(tree, cache_dir, tmp_path):
  texts = [t for k in ("code", "latin") for t in make_docs(k, 12, 1500)]
  hf = write_hf_tokenizer(str(tmp_path / "tokenizer.json"), texts, vocab_size=500)
  named = {k: text.source(os.path.join(tree, k)) for k in ("code", "latin")}
  c = _config(named, cache_dir, variant="trim", tokenizer=hf)
  b = build_data(c, str(tmp_path / "wd"))
  tok = tokenizers.load(hf)
  assert b.global_vocab_size == tok.vocab_size == 500
  assert os.path.exists(str(tmp_path / "wd" / "tokenizers" / "global.json"))
  glob = np.stack([b.global_windows[0][i] for i in range(300)])
  assert tok.eos_id in glob and glob.max() < 500
  # The windows decode back to the source's text.
  assert tok.decode(glob[0]).strip()[:20] in "".join(make_docs("code", 12, 1500))


def test_tokenizer_json_without_an_end_token_names_the_fix(tmp_path):
  from tokenizers import Tokenizer, models
  Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(
      str(tmp_path / "t.json"))
  with pytest.raises(DataError, match=r"no end-of-document token found .* Fix: set "
                     r"config.data.eos_token"):
    tokenizers.load(str(tmp_path / "t.json"))


def test_a_one_line_file_trains_its_tokenizer_on_all_of_it(tmp_path):
  """sentencepiece drops sample lines over 16 KB: a one-line source is cut into pieces first."""
  words = " ".join(make_docs("latin", 40, 1500)).replace("\n", " ")
  (tmp_path / "one.txt").write_text(words)
  lines, n = tokenizers.sample_lines(documents.read_unit(
      documents.plan("o", {"path": str(tmp_path / "one.txt")})[0], documents.ReadStats()),
      10**9)
  assert n == len(words.encode()) - words.count("\n") and len(lines) > 10
  assert max(len(ln.encode()) for ln in lines) <= tokenizers.MAX_LINE_BYTES


# ------------------------------------------------------------------ TRIM / SPEC maps
def test_trim_local_ids_round_trip_to_global(tree, cache_dir, tmp_path):
  named = {k: text.source(os.path.join(tree, k)) for k in ("code", "latin")}
  c = _config(named, cache_dir, variant="trim")
  b = build_data(c, str(tmp_path))
  G = c.data.vocab_size
  assert b.global_vocab_size == G and b.local_to_global.shape[0] == 2
  for k, (local, glob) in enumerate(zip(b.sources, b.global_windows)):
    l2g = b.local_to_global[k]
    size = local.vocab_size
    assert size < G and (l2g[:size] >= 0).all() and (l2g[size:] == -1).all()
    assert (np.diff(l2g[:size]) > 0).all()  # sorted, no repeats
    for i in range(8):
      np.testing.assert_array_equal(l2g[local.windows[i]], glob[i])  # local -> global
  a, z = (set(b.local_to_global[k][:b.sources[k].vocab_size]) for k in range(2))
  assert a != z


def test_trim_min_count_sends_rare_ids_to_unk_and_eval_counts_them(tree, cache_dir, tmp_path):
  named = {k: text.source(os.path.join(tree, k)) for k in ("code", "latin")}
  full = build_data(_config(named, cache_dir, variant="spec"), str(tmp_path / "a"))
  rare = build_data(_config(named, cache_dir, variant="spec", min_count=200), str(tmp_path / "b"))
  for k, (a, b) in enumerate(zip(full.sources, rare.sources)):
    assert b.vocab_size < a.vocab_size
    l2g = rare.local_to_global[k]
    unk_local = int(np.searchsorted(l2g[:b.vocab_size], 0))
    assert l2g[unk_local] == 0  # <unk> is always owned
    glob, local = rare.global_windows[k][3], b.windows[3]
    kept = np.isin(glob, l2g[:b.vocab_size])
    assert (~kept).any() and kept.any()
    assert (local[~kept] == unk_local).all() and (l2g[local[kept]] == glob[kept]).all()
  # Held-out targets the source does not own are counted, and the evaluator reports their share.
  s, g = rare.sources[0], rare.global_eval_batches[0]
  owned = set(rare.local_to_global[0][:s.vocab_size].tolist())
  targets = np.concatenate([b["tokens"][:, 1:] for b in g])
  real = targets[targets >= 0]
  expected = int(sum(1 for t in real.tolist() if t not in owned and t != 0))
  assert expected > 0 and sum(x["unowned_targets"] for x in s.eval_batches) == expected
  cfg = base_config().model
  body = model.init_body(cfg, jax.random.key(0))
  embed = model.init_embed(cfg, s.vocab_size, jax.random.key(1))
  res = evaluation.evaluate_source(body, embed, s.vocab_size, cfg, s.eval_batches)
  assert res["tokens"] == real.size
  np.testing.assert_allclose(res["unowned_rate"], expected / real.size)


# ------------------------------------------------------------------ the run's record
def _own_copy(tree, cache_dir, tmp_path, variant):
  """(config over a copy of code+latin that the test may change, workdir, the copy's root)."""
  import shutil
  mine = str(tmp_path / "tree")
  shutil.copytree(tree, mine)
  named = {k: text.source(os.path.join(mine, k)) for k in ("code", "latin")}
  return _config(named, cache_dir, variant=variant), str(tmp_path / "wd"), mine


def _add_a_file(root):
  with open(os.path.join(root, "latin", "new.txt"), "w") as f:
    f.write("".join(make_docs("greek", 2, 300)))


def test_eval_data_comes_from_the_run_not_the_data_folder(tree, cache_dir, tmp_path):
  import shutil
  c, wd, mine = _own_copy(tree, cache_dir, tmp_path, "spec")
  first = build_data(c, wd)
  _add_a_file(mine)
  later = build_data(c, wd, training=False)
  np.testing.assert_array_equal(later.local_to_global, first.local_to_global)
  for a, b in zip(first.sources, later.sources):
    assert a.vocab_size == b.vocab_size and b.windows is None
    for x, y in zip(a.eval_batches, b.eval_batches):
      np.testing.assert_array_equal(x["tokens"], y["tokens"])
  shutil.rmtree(mine)
  assert build_data(c, wd, training=False).names == ["code", "latin"]


def test_resuming_on_changed_data_refuses(tree, cache_dir, tmp_path):
  c, wd, mine = _own_copy(tree, cache_dir, tmp_path, "trim")
  build_data(c, wd)
  build_data(c, wd)  # unchanged: fine
  _add_a_file(mine)
  with pytest.raises(DataError, match=r"source 'latin' changed since the run in .* started: 1 "
                     r"input\(s\) differ, e.g. .*latin.* Fix: restore the files, or train on the "
                     r"new data in a new workdir"):
    build_data(c, wd)


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


def test_two_folders_that_would_share_a_name_refuse(tmp_path):
  (tmp_path / "a b").mkdir()
  (tmp_path / "a_b").mkdir()
  with pytest.raises(DataError, match=r"folders 'a b' and 'a_b' in .* both become source 'a_b'.* "
                     r"Fix: rename one of them"):
    _folders(str(tmp_path))


def test_source_smaller_than_one_batch(tree, cache_dir, tmp_path):
  (tmp_path / "tiny").mkdir()
  (tmp_path / "tiny" / "a.txt").write_text("a few words\n\nand more")
  (tmp_path / "tiny" / "b.txt").write_text("and a few more")
  c = _config({"latin": text.source(os.path.join(tree, "latin")),
               "tiny": text.source(str(tmp_path / "tiny"))}, cache_dir, variant="glob")
  with pytest.raises(DataError, match=r"source 'tiny': has \d+ training windows .*fewer than one "
                     r"batch \(batch_size=4\)\. Fix: add text"):
    build_data(c, str(tmp_path / "wd"))


def test_global_tokenizer_with_spec_opt_is_refused(tree, cache_dir, tmp_path):
  c = _config({"latin": text.source(os.path.join(tree, "latin"))}, cache_dir,
              tokenizer="/x.model")
  with pytest.raises(DataError, match="spec_opt has none"):
    build_data(c, str(tmp_path))


def test_a_one_line_source_gives_a_sample_of_about_its_share(tmp_path):
  line = " ".join(make_docs("latin", 60, 400)).replace("\n", " ")  # ~150 KB, one line
  (tmp_path / "one.txt").write_text(line)
  units = documents.plan("o", {"path": str(tmp_path / "one.txt")})
  lines = text._sample(units, 20_000)
  n = sum(len(ln.encode()) for ln in lines)
  assert 10_000 < n <= 21_000 + tokenizers.MAX_LINE_BYTES and all(ln.strip() for ln in lines)


def test_moved_or_touched_data_resumes_and_the_run_keeps_its_tokenizers(tree, cache_dir,
                                                                       tmp_path):
  import shutil
  c, wd, mine = _own_copy(tree, cache_dir, tmp_path, "trim")
  build_data(c, wd)
  moved = str(tmp_path / "moved")
  shutil.move(mine, moved)
  os.utime(os.path.join(moved, "latin", "doc01.txt"), ns=(1, 1))
  c.data.sources.code.path = os.path.join(moved, "code")
  c.data.sources.latin.path = os.path.join(moved, "latin")
  build_data(c, wd)  # same documents: the run goes on
  c.data.vocab_size = 420
  with pytest.raises(DataError, match=r"tokenizers/global.model has 400 pieces but "
                     r"config.data.vocab_size=420: this workdir was started with other settings"):
    build_data(c, wd)
  c.data.vocab_size = 400
  other = "".join(make_docs("greek", 20, 800)).split("\n")  # same size, other pieces
  tokenizers.train_sentencepiece(other, os.path.join(wd, "tokenizers", "global.model"), 400, "t")
  with pytest.raises(DataError, match=r"source 'code': its tokenizer is not the one the run .* "
                     r"Fix: restore that file"):
    build_data(c, wd)
  os.remove(os.path.join(wd, "tokenizers", "global.model"))
  with pytest.raises(DataError, match=r"the run's tokenizer .*global.model is missing"):
    build_data(c, wd, training=False)


def test_damaged_run_record_and_cached_tokenizer(tree, tmp_path):
  named = {k: text.source(os.path.join(tree, k)) for k in ("code", "latin")}
  c = _config(named, tmp_path / "cache", variant="spec")
  wd = str(tmp_path / "wd")
  build_data(c, wd)
  cached = [p for p in os.listdir(tmp_path / "cache" / "tokenizers") if p.endswith(".model")]
  path = str(tmp_path / "cache" / "tokenizers" / cached[0])
  good = open(path, "rb").read()
  open(path, "wb").write(good[:-10] + b"x" * 10)
  build_data(c, str(tmp_path / "wd2"))  # the damaged cached tokenizer is trained again
  assert open(path, "rb").read() == good
  open(os.path.join(wd, "data", "record.json"), "w").write('{"trunc')
  with pytest.raises(DataError, match=r"the run's data record .*record.json is damaged .* Fix: "
                     r"restore it"):
    build_data(c, wd, training=False)


@pytest.mark.parametrize("key, value, words", [
    ("val_fraction", 1.5, "1.5 is not in \\(0, 1\\)"), ("unit_mb", 0.0, "0.0 is not positive"),
    ("workers", -1, "-1 is negative"), ("min_count", 0, "0 is below 1")])
def test_bad_data_settings_fail_before_anything_is_read(key, value, words, tree):
  from dept_jax import config_lib
  c = _config({"latin": text.source(os.path.join(tree, "latin"))}, "/nonexistent")
  c.data[key] = value
  with pytest.raises(DataError, match=rf"config.data.{key}: {words}\. Fix"):
    config_lib.validate(c, 8)
