"""From a trained run to one source's complete model: Hugging Face export and text generation.

Which table a source's model uses follows the variant's export rule (variants.py):
  global_table      the global table, global tokenizer (std, glob)
  rows_into_global  the source's rows scattered back into the global table, global tokenizer (trim)
  rows_into_zeros   the private table scattered into the global vocabulary (rows it never saw are
                    zero; spec)
  own_table         the private table and the source's own tokenizer (spec_opt)

TRIM and SPEC trained a softmax over the source's own ids only; the export lists every other id in
generation_config's suppress_tokens so Hugging Face sampling keeps to them too, and dept_jax's own
generation runs on the local table directly.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from dept_jax import dept, experiment, generate, hf_export, variants
from dept_jax.config_lib import ConfigError


def source_model(exp, state, name: str):
  """(body, embed, vocab_size, tokenizer_path) of one source, as host numpy pytrees."""
  if name not in exp.names:
    raise ConfigError(f"--source: unknown source '{name}'. This run's sources: "
                      f"{', '.join(exp.names)}.")
  k = exp.names.index(name)
  rule = variants.get(exp.config.variant).export
  body, embed = dept.source_params(state, exp.config.variant, exp.vocab, k, None)
  body, embed = jax.tree.map(np.asarray, jax.device_get((body, embed)))
  toks = exp.data.tokenizers
  if rule == "own_table":
    return body, embed, exp.vocab.sizes[k], toks.get(name)
  G = exp.data.global_vocab_size
  if rule == "global_table":
    return body, jax.tree.map(lambda t: t[:G], embed), G, toks.get("global")
  l2g = exp.data.local_to_global[k]
  if rule == "rows_into_global":
    base = jax.tree.map(np.asarray, jax.device_get(state["global"]["embed"]))
  else:  # rows_into_zeros: no global table exists; rows this source never owned stay zero
    base = jax.tree.map(lambda t: np.zeros((G,) + t.shape[1:], t.dtype), embed)
  return body, hf_export.scatter_to_global(embed, l2g, base), G, toks.get("global")


def _need_tokenizer(path, workdir):
  if not path or not os.path.exists(path):
    raise ConfigError(f"the run in {workdir} has no tokenizer for this source (synthetic data "
                      "has none). Fix: export a run trained on text (e.g. configs/demo.py).")
  return path


def export(workdir: str, source: str, out: str, step: int | None = None,
           overwrite: bool = False) -> dict:
  exp, state, got = experiment.load_run(workdir, step)
  body, embed, vocab_size, tok = source_model(exp, state, source)
  eval_path = os.path.join(workdir, "eval.json")
  evals = None
  if os.path.exists(eval_path):
    with open(eval_path) as f:
      final = json.load(f)["final"]
    evals = {k.split("/")[-1]: v for k, v in final.items() if k.startswith(f"eval/{source}/")}
  generation = None
  if variants.get(exp.config.variant).trimmed:
    owned = set(_owned_ids(exp, exp.names.index(source)).tolist())
    generation = {"suppress_tokens": [i for i in range(vocab_size) if i not in owned]}
  info = hf_export.export_source(
      out, body, embed, vocab_size, exp.config.model, _need_tokenizer(tok, workdir),
      variant=exp.config.variant, source_name=source, sources=exp.names, eval_results=evals,
      overwrite=overwrite, max_position_embeddings=max(2048, exp.config.seq_len),
      generation=generation)
  print(f"[dept_jax] exported source '{source}' (step {got}, {info['num_params']:,} parameters) "
        f"to {out}", flush=True)
  return info


def _owned_ids(exp, k: int) -> np.ndarray:
  """A trimmed vocabulary (TRIM/SPEC): the global ids source k's table covers, in local id order."""
  return exp.data.local_to_global[k, :exp.vocab.sizes[k]]


def generate_text(workdir: str, source: str, prompt: str, *, step=None, max_new_tokens=64,
                  temperature=0.8, top_k=0, top_p=1.0, seed=0) -> str:
  import sentencepiece as spm
  exp, state, _ = experiment.load_run(workdir, step)
  body, embed, vocab_size, tok = source_model(exp, state, source)
  sp = spm.SentencePieceProcessor(model_file=_need_tokenizer(tok, workdir))
  ids = sp.encode(prompt) or [sp.eos_id()]
  to_global = None
  if variants.get(exp.config.variant).trimmed:
    # Sample from the softmax the source trained: its local table over its own ids.
    k = exp.names.index(source)
    to_global = _owned_ids(exp, k)
    local = {int(g): i for i, g in enumerate(to_global)}
    unk = local[sp.unk_id()]
    ids = [local.get(i, unk) for i in ids]
    body, embed = jax.tree.map(np.asarray, jax.device_get(
        dept.source_params(state, exp.config.variant, exp.vocab, k, None)))
    vocab_size = exp.vocab.sizes[k]
  eos = sp.eos_id() if to_global is None else local[sp.eos_id()]
  new = generate.generate(body, embed, vocab_size, exp.config.model, ids,
                          max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                          top_p=top_p, seed=seed, eos_id=eos)
  new = [t for t in new if t != eos]
  if to_global is not None:
    new = [int(to_global[t]) for t in new]
  return prompt + sp.decode(new)
