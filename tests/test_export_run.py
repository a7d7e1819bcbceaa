"""After training: eval, export to Hugging Face, generation and continued pre-training, through
the same functions the command line calls."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import sentencepiece as spm

from dept_jax import config_lib, experiment, export_run, model, modes, train
from dept_jax.data.text import add_text_data, source
from test_data_fixtures import write_tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def text_config(root, variant="spec_opt", **kw):
  c = config_lib.base_config()
  c.variant = variant
  c.steps, c.local_steps, c.batch_size, c.seq_len = 20, 10, 8, 32
  c.model.update(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64)
  c.optim.update(lr=1e-2, warmup_steps=4)
  kinds = sorted(os.listdir(root))
  add_text_data(c, {k: source(os.path.join(root, k)) for k in kinds})
  c.data.vocab_size, c.data.source_vocab_size = 320, 310
  c.data.tokenizer_train_bytes = 200_000
  c.data.eval_batches = 2
  c.log.update(every=5, progress=False)
  c.checkpoint.async_save = False
  c.update(kw)
  return c


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  base = tmp_path_factory.mktemp("export")
  root = write_tree(str(base / "data"), n_docs=8, words=800)
  workdir = str(base / "run")
  train.train(text_config(root), workdir)
  return root, workdir


def test_eval_mode_writes_eval_json(run):
  _, workdir = run
  out = modes.evaluate_run(workdir, None)
  assert out["step"] == 20
  with open(os.path.join(workdir, "eval.json")) as f:
    saved = json.load(f)["final"]
  for name in ("code", "cyrillic", "latin"):
    bpb = saved[f"eval/{name}/bits_per_byte"]
    assert 0 < bpb < 8 and saved[f"eval/{name}/perplexity"] > 1


def test_export_loads_in_transformers_with_the_same_logits_and_ids(run, tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  _, workdir = run
  out = str(tmp_path / "hf")
  export_run.export(workdir, "cyrillic", out)
  hf = transformers.AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
  tok = transformers.AutoTokenizer.from_pretrained(out)
  exp, state, _ = experiment.load_run(workdir)
  body, embed, vocab, tok_path, _ = export_run.source_model(exp, state, "cyrillic")
  sp = spm.SentencePieceProcessor(model_file=tok_path)
  text = "кало мине руто\nпобе дагожи"
  ids = sp.encode(text)
  assert tok(text, add_special_tokens=False)["input_ids"] == ids
  ours = np.asarray(model.forward(body, embed, np.asarray([ids]), vocab, exp.config.model))
  with torch.no_grad():
    theirs = hf(torch.tensor([ids])).logits.numpy()
  assert theirs.shape == (1, len(ids), vocab)
  np.testing.assert_allclose(theirs, ours[..., :vocab], atol=1e-4)
  with open(os.path.join(out, "README.md")) as f:
    card = f.read()
  assert "spec_opt" in card and "latin" in card and "bits_per_byte" in card


def test_export_errors(run, tmp_path):
  _, workdir = run
  with pytest.raises(config_lib.ConfigError, match="unknown source 'greek'.*code, cyrillic, latin"):
    export_run.export(workdir, "greek", str(tmp_path / "x"))
  out = str(tmp_path / "hf")
  export_run.export(workdir, "latin", out)
  with pytest.raises(FileExistsError, match="already holds a model"):
    export_run.export(workdir, "latin", out)
  export_run.export(workdir, "latin", out, overwrite=True)
  with pytest.raises(FileNotFoundError, match="not a dept_jax run directory"):
    export_run.export(str(tmp_path / "nothing"), "latin", str(tmp_path / "z"))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.run([sys.executable, "-m", "dept_jax.main", "--mode=export", "--workdir",
                         workdir, "--source", "latin", "--out", out], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and "already holds a model" in proc.stderr, proc.stderr[-2000:]
  empty = str(tmp_path / "empty")
  os.makedirs(empty)
  with open(os.path.join(workdir, "config.json")) as f, open(os.path.join(empty, "config.json"),
                                                               "w") as g:
    g.write(f.read())
  with pytest.raises(Exception, match="has no data record"):
    export_run.export(empty, "latin", str(tmp_path / "y"))


def test_generate_is_reproducible(run):
  _, workdir = run
  a = export_run.generate_text(workdir, "latin", "kalo", max_new_tokens=12, seed=3)
  b = export_run.generate_text(workdir, "latin", "kalo", max_new_tokens=12, seed=3)
  assert a == b and a.startswith("kalo") and len(a) > len("kalo")


def test_continued_pretraining_with_frozen_body(run, tmp_path):
  root, parent = run
  new_root = write_tree(str(tmp_path / "new"), kinds=("code",), n_docs=8, words=800)
  os.rename(os.path.join(new_root, "code"), os.path.join(new_root, "newlang"))
  c = text_config(new_root, **{"freeze_body": True})
  c.init_from.workdir = parent
  workdir = str(tmp_path / "cont")
  train.train(c, workdir)
  _, parent_state, _ = experiment.load_run(parent)
  _, state, _ = experiment.load_run(workdir)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state["global"]["body"]),
               jax.device_get(parent_state["global"]["body"]))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  losses = [r["train/newlang/loss"] for r in rows if "train/newlang/loss" in r]
  assert losses[-1] < losses[0] - 0.3


def test_spec_global_phase_gives_one_model_for_every_source(run, tmp_path):
  from dept_jax.continued import global_phase_config
  _, parent = run
  c = global_phase_config(parent)
  assert c.variant == "std" and c.steps == 10 and c.init_from.workdir == parent
  c.log.progress = False
  workdir = str(tmp_path / "global")
  train.train(c, workdir)
  exp, state, _ = experiment.load_run(workdir)
  _, parent_state, _ = experiment.load_run(parent)
  assert all(p.endswith("global.model") for p in exp.data.tokenizers.values())
  a = export_run.source_model(exp, state, "latin")
  b = export_run.source_model(exp, state, "code")
  np.testing.assert_array_equal(a[1]["table"], b[1]["table"])  # one table for all sources
  assert a[2] == c.data.vocab_size
  # The body started from the parent's and moved (it is not frozen here).
  p = np.asarray(jax.device_get(parent_state["global"]["body"]["final_norm"]))
  assert not np.array_equal(a[0]["final_norm"], p)


def _text_the_source_owns(root, kind, sp, owned, n_lines=4):
  """Lines of the source's own text whose global tokens it all trained on."""
  lines = []
  for name in sorted(os.listdir(os.path.join(root, kind))):
    with open(os.path.join(root, kind, name), encoding="utf-8") as f:
      lines += [l for l in f.read().split("\n") if l.strip() and set(sp.encode(l)) <= owned]
  return "\n".join(lines[:n_lines])


@pytest.mark.parametrize("variant", ["trim", "spec"])
def test_trim_spec_export_holds_only_the_sources_own_vocabulary(run, tmp_path, variant):
  """Before: the export put the source's table into the global vocabulary with zero rows for ids
  it never trained on and relied on suppress_tokens, which vLLM and other servers ignore (tied
  embeddings: those ids got logit 0 and could be sampled)."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  root, _ = run
  workdir = str(tmp_path / variant)
  train.train(text_config(root, variant, steps=10, local_steps=5), workdir)
  out = str(tmp_path / "hf")
  export_run.export(workdir, "latin", out)
  exp, state, _ = experiment.load_run(workdir)
  m = export_run.source_model(exp, state, "latin")
  owned = [int(g) for g in m.token_ids]
  assert m.vocab_size == len(owned) < exp.data.global_vocab_size
  sp = spm.SentencePieceProcessor(model_file=exp.data.tokenizers["latin"])
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["vocab_size"] == len(owned)
  with open(os.path.join(out, "generation_config.json")) as f:
    assert "suppress_tokens" not in json.load(f)
  assert not os.path.exists(os.path.join(out, "tokenizer.model"))  # it would give global ids
  hf = transformers.AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
  tok = transformers.AutoTokenizer.from_pretrained(out)
  # Every id a consumer can meet is a piece the source trained on, in its table's order.
  assert hf.get_output_embeddings().weight.shape[0] == len(tok) == len(owned)
  assert tok.convert_ids_to_tokens(list(range(len(owned)))) == [sp.id_to_piece(g) for g in owned]
  # Parity: the source's own text gets the ids its table was trained with, and the same logits.
  text = _text_the_source_owns(root, "latin", sp, set(owned))
  local = {g: i for i, g in enumerate(owned)}
  ids = [local[g] for g in sp.encode(text)]
  assert len(ids) > 20 and tok(text, add_special_tokens=False)["input_ids"] == ids
  ours = np.asarray(model.forward(m.body, m.embed, np.asarray([ids]), m.vocab_size,
                                  exp.config.model))
  with torch.no_grad():
    theirs = hf(torch.tensor([ids])).logits.numpy()
  assert theirs.shape == (1, len(ids), len(owned))
  np.testing.assert_allclose(theirs, ours[..., :len(owned)], atol=1e-4)
  assert tok.decode(ids) == text
  generated = export_run.generate_text(workdir, "latin", "kalo", max_new_tokens=16, seed=0)
  assert generated.startswith("kalo")
  assert set(sp.encode(generated[len("kalo"):])) <= set(owned) | {sp.unk_id()}


def test_export_keeps_a_users_files_and_names_a_bad_out_before_loading(run, tmp_path):
  """Before: a README.md of the user's was silently replaced; a file as --out gave '[Errno 17]'."""
  _, workdir = run
  mine = tmp_path / "notes"
  mine.mkdir()
  (mine / "README.md").write_text("my notes")
  with pytest.raises(FileExistsError, match=r"already holds README.md, which the export would "
                     r"overwrite. Fix: pass --overwrite"):
    export_run.export(workdir, "latin", str(mine))
  assert (mine / "README.md").read_text() == "my notes" and os.listdir(mine) == ["README.md"]
  a_file = tmp_path / "model.bin"
  a_file.write_text("x")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  for args, words in (
      (["--mode=export", "--source", "latin", "--out", str(a_file)],
       f"--out {a_file} is a file, not a folder. Fix: pass a folder path"),
      (["--mode=export", "--source", "latin", "--out", str(a_file / "sub")],
       f"--out {a_file / 'sub'} cannot be created: {a_file} is a file"),
      (["--mode=generate", "--source", "latin", "--top_p", "1.5"],
       "top_p must be in (0, 1] (1 = off), got 1.5. Fix: pass --top_p a value in (0, 1]"),
      (["--mode=generate", "--source", "latin", "--temperature", "-1"],
       "temperature must be >= 0 (0 = greedy), got -1.0"),
      (["--mode=generate", "--source", "latin", "--max_new_tokens", "-5"],
       "max_new_tokens must be >= 0, got -5")):
    # A workdir that does not exist: the flag is rejected before anything is loaded.
    proc = subprocess.run([sys.executable, "-m", "dept_jax.main", *args, "--workdir",
                           str(tmp_path / "no_run")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"dept_jax: error: {words}"), lines[0]


def test_a_prompt_past_the_trained_context_warns(run, capsys):
  _, workdir = run  # trained with seq_len 32
  export_run.generate_text(workdir, "latin", "kalo", max_new_tokens=4, seed=0)
  assert "warning" not in capsys.readouterr().err
  export_run.generate_text(workdir, "latin", "kalo mine " * 20, max_new_tokens=4, seed=0)
  err = capsys.readouterr().err
  assert "warning: the prompt (" in err
  assert "max_new_tokens (4) run past the 32-token context" in err


def test_spec_export_does_not_change_when_the_data_changes_afterwards(run, tmp_path):
  """The id map, tokenizer and eval text live in the run: adding a file to a source after
  training (or moving the data away) leaves the export byte for byte the same."""
  import shutil
  root, _ = run
  data = str(tmp_path / "data")
  shutil.copytree(root, data)
  workdir = str(tmp_path / "spec")
  train.train(text_config(data, "spec", steps=10, local_steps=5), workdir)
  first, again = str(tmp_path / "hf1"), str(tmp_path / "hf2")
  export_run.export(workdir, "latin", first)
  with open(os.path.join(data, "latin", "extra.txt"), "w") as f:
    f.write("".join(open(os.path.join(data, "cyrillic", n)).read()
                    for n in sorted(os.listdir(os.path.join(data, "cyrillic")))[:2]))
  export_run.export(workdir, "latin", again)
  for name in sorted(os.listdir(first)):
    assert open(os.path.join(first, name), "rb").read() == \
        open(os.path.join(again, name), "rb").read(), name
  shutil.rmtree(data)  # the data folder is needed only for training
  assert export_run.generate_text(workdir, "latin", "kalo", max_new_tokens=4).startswith("kalo")
  assert modes.evaluate_run(workdir, None)["step"] == 10


@pytest.fixture(scope="module")
def bpe_tokenizer(tmp_path_factory):
  """A byte-level BPE tokenizer.json trained here with the `tokenizers` library (as GPT-NeoX's is
  built) on the three sources' text."""
  from test_data_fixtures import make_docs, write_hf_tokenizer
  path = str(tmp_path_factory.mktemp("bpe") / "tokenizer.json")
  return write_hf_tokenizer(path, [t for k in ("code", "cyrillic", "latin")
                                   for t in make_docs(k, 8, 800)], vocab_size=400)


def test_a_run_on_a_hugging_face_tokenizer_json_exports_and_loads(run, bpe_tokenizer, tmp_path):
  """GLOB on a byte-level BPE tokenizer.json: the export carries the tokenizer, transformers loads
  it with the same ids and the same logits."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from dept_jax.data import tokenizers
  from test_data_fixtures import make_docs
  root, _ = run
  hf = bpe_tokenizer
  workdir = str(tmp_path / "glob")
  c = text_config(root, "glob", steps=10, local_steps=5)
  c.data.tokenizer = hf
  train.train(c, workdir)
  out = str(tmp_path / "hf")
  export_run.export(workdir, "latin", out)
  exp, state, _ = experiment.load_run(workdir)
  m = export_run.source_model(exp, state, "latin")
  ours_tok = tokenizers.load(os.path.join(workdir, "tokenizers", "global.json"))
  tok = transformers.AutoTokenizer.from_pretrained(out)
  model_hf = transformers.AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
  text = make_docs("latin", 1, 60, seed=5)[0]
  ids = ours_tok.encode([text])[0].tolist()
  assert tok(text, add_special_tokens=False)["input_ids"] == ids and tok.eos_token_id == 0
  ours = np.asarray(model.forward(m.body, m.embed, np.asarray([ids]), m.vocab_size,
                                  exp.config.model))
  with torch.no_grad():
    theirs = model_hf(torch.tensor([ids])).logits.numpy()
  np.testing.assert_allclose(theirs, ours[..., :m.vocab_size], atol=1e-4)


@pytest.fixture(scope="module")
def bpe_spec(run, bpe_tokenizer, tmp_path_factory):
  """A SPEC run on the byte-level BPE tokenizer.json (the pile presets' setting)."""
  root, _ = run
  workdir = str(tmp_path_factory.mktemp("bpe_spec") / "run")
  c = text_config(root, "spec", steps=5, local_steps=5)
  c.data.tokenizer = bpe_tokenizer
  train.train(c, workdir)
  return root, workdir


def _greedy_in_transformers(hf, tok, prompt_ids, n):
  """transformers' greedy continuation of prompt_ids, EOS dropped (generate_text drops it)."""
  import torch
  with torch.no_grad():
    out = hf.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids),
                      dtype=torch.long), max_new_tokens=n, do_sample=False)[0].tolist()
  return [t for t in out if t != tok.eos_token_id]


def test_spec_on_a_bpe_tokenizer_json_exports_every_source_in_its_own_pieces(bpe_spec, tmp_path):
  """Before: '--mode=export' of a TRIM/SPEC run on a tokenizer.json refused (a BPE model's merges
  would reach pieces the source does not own). Now each source exports the BPE restricted to its
  pieces (ids = its table's rows), plus the bytes and the pieces merges need on the way."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from tokenizers import Tokenizer, pre_tokenizers
  from dept_jax.data import tokenizers
  from test_data_fixtures import make_docs
  root, workdir = bpe_spec
  exp, state, _ = experiment.load_run(workdir)
  glob = Tokenizer.from_file(exp.data.tokenizers["latin"])
  for name in exp.names:
    out = str(tmp_path / name)
    export_run.export(workdir, name, out)
    m = export_run.source_model(exp, state, name)
    owned = [int(g) for g in m.token_ids]
    V, local = len(owned), {g: i for i, g in enumerate(owned)}
    tok = transformers.AutoTokenizer.from_pretrained(out)
    mine = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    assert V < glob.get_vocab_size() and len(tok) > V
    assert [mine.id_to_token(i) for i in range(V)] == [glob.id_to_token(g) for g in owned]
    pieces = set(mine.get_vocab())
    assert set(pre_tokenizers.ByteLevel.alphabet()) <= pieces  # any text can be spelled
    # Pieces a merge builds on the way to an owned one: never a final token of the source's
    # text (so not owned), but without them its own words would change.
    assert pieces - set(pre_tokenizers.ByteLevel.alphabet()) - {glob.id_to_token(g) for g in owned}
    # Training text: the global pieces are all owned, and the export gives the same ones.
    train_docs = [open(os.path.join(root, name, f), encoding="utf-8").read()
                  for f in sorted(os.listdir(os.path.join(root, name)))]
    for doc in train_docs:
      ids = glob.encode(doc, add_special_tokens=False).ids
      assert set(ids) <= set(owned)
      assert tok(doc, add_special_tokens=False)["input_ids"] == [local[g] for g in ids]
    # Held-out text (same language, never trained on): every word whose global pieces the
    # source owns gets those pieces; every text encodes and decodes back exactly.
    words = 0
    for doc in make_docs(name, 12, 800)[8:]:
      for word, _ in glob.pre_tokenizer.pre_tokenize_str(glob.normalizer.normalize_str(doc)
                                                         if glob.normalizer else doc):
        want = [t.id for t in glob.model.tokenize(word)]
        if set(want) <= set(owned):
          words += 1
          assert [t.value for t in mine.model.tokenize(word)] == \
              [glob.id_to_token(g) for g in want], word
      assert tok.decode(tok(doc, add_special_tokens=False)["input_ids"]) == doc
    assert words > 1000
    # A character no source ever saw still encodes (in single bytes), and those ids read the row
    # the run used for what it did not own (its unknown-token row: EOS, as byte-level BPE has
    # no <unk>).
    text = train_docs[0][:40] + " 漢字 😀 ñ"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text and max(ids) >= V
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
    table = hf.get_input_embeddings().weight.detach().numpy()
    unk_row = local[tokenizers.load(exp.data.tokenizers[name]).unknown_id]
    for i in ids[ids.index(max(ids)):]:
      np.testing.assert_array_equal(table[i], m.embed["table"][i if i < V else unk_row])
    with open(os.path.join(out, "README.md")) as f:
      assert "never trained on" in f.read()
    # The run's logits on the source's own text, in transformers.
    ids = tok(train_docs[1], add_special_tokens=False)["input_ids"][:96]
    ours = np.asarray(model.forward(m.body, m.embed, np.asarray([ids]), V, exp.config.model))
    with torch.no_grad():
      theirs = hf(torch.tensor([ids])).logits.numpy()
    np.testing.assert_allclose(theirs[..., :V], ours[..., :V], atol=1e-4)
    if exp.config.model.tie_embeddings:  # the pieces it never trained on score as its <unk> row
      np.testing.assert_array_equal(theirs[..., V:],
                                    np.repeat(theirs[..., unk_row:unk_row + 1], len(tok) - V, -1))
  # --mode=generate (greedy) and transformers' greedy generation: the same text.
  prompt = train_docs[0][:24]
  ids = tok(prompt, add_special_tokens=False)["input_ids"]
  assert tok.decode(ids) == prompt
  want = tok.decode(_greedy_in_transformers(hf, tok, ids, 12))
  assert export_run.generate_text(workdir, name, prompt, max_new_tokens=12, temperature=0) == want


def test_generate_text_is_the_exported_models_greedy_text(run, tmp_path):
  """Before: generate decoded the new ids alone, and sentencepiece drops a first piece's leading
  '▁': 'kalo' + '▁mine' printed 'kalomine', where transformers decodes 'kalo mine'."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  _, workdir = run
  out = str(tmp_path / "hf")
  export_run.export(workdir, "latin", out)
  tok = transformers.AutoTokenizer.from_pretrained(out)
  hf = transformers.AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
  spaced = 0
  for prompt in ("kalo", "mine ruto", "kalo mine ruto be"):
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    new = _greedy_in_transformers(hf, tok, ids, 10)[len(ids):]
    spaced += tok.convert_ids_to_tokens(new[0]).startswith("\u2581")
    want = tok.decode(ids + new)
    assert export_run.generate_text(workdir, "latin", prompt, max_new_tokens=10,
                                    temperature=0) == want
  assert spaced  # a continuation that starts a new word: the case that lost its space
