"""Hugging Face export: weights, config, tokenizer parity, sharding, overwrite refusal, TRIM scatter.

The parity tests load the export with transformers on CPU torch (the `hf` extra) and are skipped
when those are not installed; the rest needs only numpy, safetensors and sentencepiece.
"""
import glob
import json
import os
import sysconfig

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece as spm

from dept_jax import config_lib, hf_export, model


def _stdlib_lines(n_files=30):
  """Training/eval text the Python install already holds (no downloads)."""
  stdlib = sysconfig.get_paths()["stdlib"]
  lines = []
  for f in sorted(glob.glob(os.path.join(stdlib, "*.py")))[:n_files]:
    with open(f, encoding="utf-8", errors="ignore") as fh:
      lines += [l for l in fh.read().splitlines() if l.strip()]
  return lines


def _read(path):
  with open(path, encoding="utf-8") as f:
    return f.read()


def _json(path):
  return json.loads(_read(path))


@pytest.fixture(scope="module")
def lines():
  return _stdlib_lines()


EXTRA_TEXTS = ["  leading,   repeated   and trailing spaces  ", "tab\there", "a\nb\r\nc", "",
               " ", "ｆｕｌｌｗｉｄｔｈ ＡＢＣ ① ﬁ", "unicode é 漢字 😀 ñ", "x = {'a': [1, 2.5e-3]}",
               "literal <s> and </s> and <unk> and <0x41>"]


def _train_spm(tmp, lines, model_type, vocab_size):
  prefix = os.path.join(tmp, f"sp_{model_type}")
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines[:4000]), model_prefix=prefix, vocab_size=vocab_size,
      model_type=model_type, byte_fallback=(model_type == "bpe"), character_coverage=0.9995,
      minloglevel=2)
  return prefix + ".model"


def _docs(lines, n=10):
  return ["\n".join(lines[i:i + n]) + "\n" for i in range(0, len(lines), n)]


@pytest.fixture(scope="module")
def spm_models(tmp_path_factory, lines):
  tmp = str(tmp_path_factory.mktemp("spm"))
  # The settings dept_jax.data.tokenizers trains with: identity normalisation, whitespace kept,
  # "\n" a user-defined piece, byte fallback; trained on multi-line documents.
  project = os.path.join(tmp, "sp_project.model")
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(_docs(lines[:4000])), model_prefix=project[:-len(".model")],
      model_type="unigram", vocab_size=400, byte_fallback=True,
      normalization_rule_name="identity", remove_extra_whitespaces=False,
      user_defined_symbols=["\n"], character_coverage=0.9995, max_sentence_length=16384,
      unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
  return {"unigram": _train_spm(tmp, lines, "unigram", 320),
          "bpe": _train_spm(tmp, lines, "bpe", 400), "project": project}


def _cfg(tie=True, kv=0):
  cfg = config_lib.base_config().model
  cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_ff = 32, 2, 4, kv, 64
  cfg.tie_embeddings = tie
  cfg.init_std = 0.2  # peaky logits, so a wrong weight layout shows up
  cfg.rope_theta = 500.0
  cfg.norm_eps = 1e-6
  return cfg


def _params(cfg, rows, seed=0):
  kb, ke = jax.random.split(jax.random.PRNGKey(seed))
  body = model.init_body(cfg, kb)
  # Norm scales away from 1 so a swapped or missing norm is caught.
  body["blocks"]["attn_norm"] = 1.0 + 0.1 * jax.random.normal(kb, body["blocks"]["attn_norm"].shape)
  body["blocks"]["mlp_norm"] = 1.0 - 0.1 * jax.random.normal(ke, body["blocks"]["mlp_norm"].shape)
  body["final_norm"] = 1.0 + 0.05 * jnp.arange(cfg.d_model) / cfg.d_model
  return body, model.init_embed(cfg, rows, ke)


def _export(tmp, sp_path, cfg, pad_rows=7, **kw):
  vocab = spm.SentencePieceProcessor(model_file=sp_path).get_piece_size()
  body, embed = _params(cfg, vocab + pad_rows)
  out = os.path.join(tmp, "hf")
  kw.setdefault("variant", "spec_opt")
  kw.setdefault("source_name", "python")
  kw.setdefault("sources", ["python", "prose", "math"])
  info = hf_export.export_source(out, body, embed, vocab, cfg, sp_path, **kw)
  return out, body, embed, vocab, info


# ----------------------------------------------------------------------------- no torch needed


def test_config_card_and_files(tmp_path, spm_models):
  cfg = _cfg(tie=False, kv=2)
  out, _, _, vocab, info = _export(
      str(tmp_path), spm_models["unigram"], cfg,
      eval_results={"loss": 3.21, "bits_per_byte": 1.0625, "perplexity": 24.8})
  c = _json(os.path.join(out, "config.json"))
  assert c["architectures"] == ["LlamaForCausalLM"] and c["model_type"] == "llama"
  assert (c["vocab_size"], c["hidden_size"], c["intermediate_size"]) == (vocab, 32, 64)
  assert (c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"]) == (2, 4, 2)
  assert c["head_dim"] == 8 and c["tie_word_embeddings"] is False
  assert c["rope_theta"] == 500.0 and c["rms_norm_eps"] == 1e-6
  assert (c["bos_token_id"], c["eos_token_id"], c["pad_token_id"]) == (1, 2, None)
  g = _json(os.path.join(out, "generation_config.json"))
  assert (g["bos_token_id"], g["eos_token_id"], g["pad_token_id"]) == (1, 2, 2)
  card = _read(os.path.join(out, "README.md"))
  for s in ("spec_opt", "`python`", "`prose`", "`math`", "| bits_per_byte | 1.0625 |",
            "| loss | 3.2100 |"):
    assert s in card
  from safetensors.numpy import load_file
  w = load_file(os.path.join(out, "model.safetensors"))
  assert w["model.embed_tokens.weight"].shape == (vocab, 32)  # padding rows dropped
  assert w["lm_head.weight"].shape == (vocab, 32)
  assert w["model.layers.1.self_attn.k_proj.weight"].shape == (16, 32)  # [KV*hd, D]
  assert len(w) == 2 + 2 * 9 + 1 and info["num_params"] == sum(v.size for v in w.values())


def test_overwrite_refused(tmp_path, spm_models):
  cfg = _cfg()
  out, *_ = _export(str(tmp_path), spm_models["bpe"], cfg, max_shard_bytes=20_000)
  assert os.path.exists(os.path.join(out, hf_export.INDEX_NAME))
  with pytest.raises(FileExistsError, match="already holds a model.*overwrite=True"):
    _export(str(tmp_path), spm_models["bpe"], cfg)
  _export(str(tmp_path), spm_models["bpe"], cfg, overwrite=True)  # unsharded this time
  names = sorted(os.listdir(out))
  assert "model.safetensors" in names and hf_export.INDEX_NAME not in names
  assert not [n for n in names if n.startswith("model-")]  # stale shards removed


def test_vocab_mismatch_refused(tmp_path, spm_models):
  cfg = _cfg()
  body, embed = _params(cfg, 500)
  with pytest.raises(hf_export.ExportError, match="vocab_size=499 but the tokenizer"):
    hf_export.export_source(str(tmp_path / "x"), body, embed, 499, cfg, spm_models["bpe"],
                            variant="trim", source_name="a")


def test_sharded_index(tmp_path, spm_models):
  out, *_ = _export(str(tmp_path), spm_models["unigram"], _cfg(), max_shard_bytes=16_384)
  idx = _json(os.path.join(out, hf_export.INDEX_NAME))
  shards = sorted(set(idx["weight_map"].values()))
  assert len(shards) > 2 and all(os.path.exists(os.path.join(out, s)) for s in shards)
  from safetensors.numpy import load_file
  sizes = {s: sum(v.nbytes for v in load_file(os.path.join(out, s)).values()) for s in shards}
  assert sum(sizes.values()) == idx["metadata"]["total_size"]
  # Only a single tensor larger than the limit may make a shard exceed it.
  for s, n in sizes.items():
    assert n <= 16_384 or len(load_file(os.path.join(out, s))) == 1


def _hf():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  return torch, transformers


@pytest.mark.parametrize("tie,kv,shard", [(True, 0, None), (False, 2, None), (True, 1, 12_000)])
def test_logits_match_transformers(tmp_path, spm_models, lines, tie, kv, shard):
  torch, transformers = _hf()
  cfg = _cfg(tie=tie, kv=kv)
  kw = {"max_shard_bytes": shard} if shard else {}
  out, body, embed, vocab, _ = _export(str(tmp_path), spm_models["unigram"], cfg, **kw)
  if shard:
    assert os.path.exists(os.path.join(out, hf_export.INDEX_NAME))
  hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  assert type(hf).__name__ == "LlamaForCausalLM"
  assert hf.config.vocab_size == vocab and hf.config.tie_word_embeddings == tie
  if tie:
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
  sp = spm.SentencePieceProcessor(model_file=spm_models["unigram"])
  ids = [sp.encode(l) for l in lines[100:104]]
  n = min(len(i) for i in ids)
  tokens = np.array([i[:n] for i in ids], np.int32)
  ours = np.asarray(model.forward(body, embed, jnp.asarray(tokens), vocab, cfg))[..., :vocab]
  with torch.no_grad():
    theirs = hf(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
  assert theirs.shape == ours.shape
  diff = float(np.abs(theirs - ours).max())
  print(f"max |logit diff| tie={tie} kv={kv}: {diff:.2e} (logit scale {np.abs(ours).max():.1f})")
  assert diff < 1e-4
  if not tie and kv == 2:  # our KV-cache greedy decoding == transformers' generate
    from dept_jax import generate
    prompt = tokens[0, :6].tolist()
    ours_gen = generate.generate(body, embed, vocab, cfg, prompt, max_new_tokens=12,
                                 temperature=0.0, eos_id=hf.config.eos_token_id)
    with torch.no_grad():
      hf_gen = hf.generate(torch.tensor([prompt]), max_new_tokens=12,
                           do_sample=False)[0, len(prompt):].tolist()
    assert ours_gen == hf_gen


def _score(sp, ids):
  return sum(sp.get_score(i) for i in ids)


@pytest.mark.parametrize("kind", ["bpe", "unigram", "project"])
def test_tokenizer_parity(tmp_path, spm_models, lines, kind):
  _, transformers = _hf()
  out, *_ = _export(str(tmp_path), spm_models[kind], _cfg())
  tok = transformers.AutoTokenizer.from_pretrained(out)
  sp = spm.SentencePieceProcessor(model_file=spm_models[kind])
  texts = (_docs(lines[4000:7000]) if kind == "project" else lines[4000:6000]) + EXTRA_TEXTS
  batch = tok(texts)["input_ids"]
  ties = 0
  for text, got in zip(texts, batch):
    want = sp.encode(text)
    if got != want:
      # Unigram only: sentencepiece sums scores in float32, tokenizers in float64, so two
      # segmentations with exactly equal scores can be broken differently. Anything else fails.
      assert kind != "bpe", (text, want, got)
      assert sp.decode(got) == sp.decode(want), (text, want, got)
      assert abs(_score(sp, got) - _score(sp, want)) < 1e-5, (text, want, got)
      ties += 1
  print(f"{kind}: {ties} equal-score ties of {len(texts)} texts")
  assert ties <= len(texts) // 100
  assert tok.bos_token_id == sp.bos_id() and tok.eos_token_id == sp.eos_id()
  assert tok.unk_token_id == sp.unk_id()
  text = "def f(x):\n    return x + 1  # comment"
  assert tok.decode(tok(text)["input_ids"]) == sp.decode(sp.encode(text))


def test_tokenizer_add_bos(tmp_path, spm_models, lines):
  _, transformers = _hf()
  out, *_ = _export(str(tmp_path), spm_models["bpe"], _cfg(), add_bos=True)
  tok = transformers.AutoTokenizer.from_pretrained(out)
  sp = spm.SentencePieceProcessor(model_file=spm_models["bpe"])
  for text in lines[4000:4050]:
    assert tok(text)["input_ids"] == [sp.bos_id()] + sp.encode(text)


# ----------------------------------------------------------------------------- a source's pieces


def _trained_tokenizer(kind, lines):
  """A small tokenizer of each `tokenizers` model kind, trained here on stdlib lines."""
  from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
  from tokenizers import trainers
  specials = ["<unk>", "<s>", "</s>"]
  if kind == "bpe":  # sentencepiece-style, not byte-level: text it cannot spell becomes <unk>
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials)
  elif kind == "unigram":
    tok = Tokenizer(models.Unigram())
    trainer = trainers.UnigramTrainer(vocab_size=600, special_tokens=specials, unk_token="<unk>")
  elif kind == "wordpiece":
    tok = Tokenizer(models.WordPiece(unk_token="<unk>"))
    trainer = trainers.WordPieceTrainer(vocab_size=600, special_tokens=specials)
  else:
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    trainer = trainers.WordLevelTrainer(vocab_size=600, special_tokens=specials)
  tok.normalizer = normalizers.NFKC()
  tok.pre_tokenizer = pre_tokenizers.Metaspace()
  tok.decoder = decoders.Metaspace()
  tok.train_from_iterator(lines[:2000], trainer)
  tok.post_processor = processors.TemplateProcessing(  # ids that must follow the renumbering
      single="<s> $A </s>", special_tokens=[(t, tok.token_to_id(t)) for t in ("<s>", "</s>")])
  return tok


def _words(tok, text):
  return [w for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text))]


@pytest.mark.parametrize("kind", ["bpe", "unigram", "wordpiece", "wordlevel"])
def test_a_sources_tokenizer_keeps_its_pieces_for_every_model_kind(lines, kind):
  """The restricted tokenizer splits every word whose global pieces the source owns into those
  pieces, the source's own lines exactly as the global tokenizer does, and anything else into its
  own pieces or <unk>; its specials and template follow the new ids."""
  from dept_jax import vocab_restrict
  glob = _trained_tokenizer(kind, lines)
  source, held = lines[:400], lines[5000:5400]
  unk = glob.token_to_id("<unk>")
  owned = sorted({i for l in source for i in glob.encode(l, add_special_tokens=False).ids}
                 | {unk, glob.token_to_id("</s>")}, key=lambda g: (g * 7919) % 1009)  # any order
  tok, rows = vocab_restrict.restrict(glob, owned, unk)
  local = {g: i for i, g in enumerate(owned)}
  assert [tok.id_to_token(i) for i in range(len(owned))] == [glob.id_to_token(g) for g in owned]
  assert rows[:len(owned)].tolist() == list(range(len(owned)))
  assert (rows[len(owned):] == local[unk]).all()
  for line in source:
    want = [local[g] for g in glob.encode(line).ids if g != glob.token_to_id("<s>")]
    assert tok.encode(line).ids[1:] == want, line  # "<s>" is new: the template still adds it
  assert tok.encode("x").tokens[0] == "<s>" and tok.encode("x").tokens[-1] == "</s>"
  checked = 0
  for line in held:
    for word in _words(glob, line):
      want = [t.value for t in glob.model.tokenize(word)]
      if all(glob.token_to_id(p) in local for p in want):
        checked += 1
        assert [t.value for t in tok.model.tokenize(word)] == want, word
  assert checked > 200
  never_seen = tok.encode("漢字 😀", add_special_tokens=False).ids
  assert never_seen and set(never_seen) <= set(range(len(rows)))
  extra = len(rows) - len(owned)
  if kind == "bpe":  # the alphabet: every character the global tokenizer could spell
    assert extra > 0 and {p for p in glob.get_vocab() if len(p) == 1} <= set(tok.get_vocab())
  else:  # only <s>, which the template inserts
    assert extra == 1 and tok.id_to_token(len(owned)) == "<s>"


def test_a_sentencepiece_bpe_with_byte_fallback_restricts_to_its_pieces_and_bytes(spm_models,
                                                                                 lines):
  """Before: restricting a sentencepiece BPE model was refused. Now the source's lines get the
  ids sentencepiece gave them, and a character it never saw is spelled in byte pieces."""
  from dept_jax import hf_tokenizer
  sp = spm.SentencePieceProcessor(model_file=spm_models["bpe"])
  source = lines[:300]
  owned = sorted({i for l in source for i in sp.encode(l)} | {sp.unk_id(), sp.eos_id()})
  tok = hf_tokenizer.for_export(spm_models["bpe"], owned)
  local = {g: i for i, g in enumerate(owned)}
  assert tok.own == len(owned) < len(tok.rows) and tok.restricted_from == sp.get_piece_size()
  for line in source:
    assert tok.tokenizer.encode(line).ids == [local[g] for g in sp.encode(line)], line
  text = "x = '漢字 😀'"
  ids = tok.tokenizer.encode(text).ids
  assert tok.tokenizer.decode(ids) == text
  assert any(tok.tokenizer.id_to_token(i).startswith("<0x") for i in ids)
  assert (tok.rows[tok.own:] == local[sp.unk_id()]).all()


@pytest.mark.parametrize("post", ["bert", "roberta", "sequence"])
def test_the_tokens_a_post_processor_inserts_follow_the_new_ids(post):
  from tokenizers import Tokenizer, models, pre_tokenizers, processors
  from dept_jax import vocab_restrict
  pieces = ["<unk>", "a", "[CLS]", "b", "[SEP]", "c"]
  glob = Tokenizer(models.WordLevel({p: i for i, p in enumerate(pieces)}, unk_token="<unk>"))
  glob.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  cls, sep = ("[CLS]", 2), ("[SEP]", 4)
  glob.post_processor = {
      "bert": processors.BertProcessing(sep, cls),
      "roberta": processors.RobertaProcessing(sep, cls),
      "sequence": processors.Sequence([processors.ByteLevel(trim_offsets=False),
                                       processors.TemplateProcessing(
                                           single="[CLS] $A [SEP]", special_tokens=[cls, sep])]),
  }[post]
  tok, rows = vocab_restrict.restrict(glob, [5, 0, 1], unknown_id=0)  # c, <unk>, a
  enc = tok.encode("a c b")
  assert enc.tokens == ["[CLS]", "a", "c", "<unk>", "[SEP]"]
  assert enc.ids == [3, 2, 0, 1, 4] and rows.tolist() == [0, 1, 2, 1, 1]
