"""From a trained run to one source's complete model: Hugging Face export and text generation.

Which table and vocabulary a source's model has follows the variant's export rule (variants.py):
  global  the global tokenizer and the source's table over it (std, glob: the global table)
  owned   the source's own table (TRIM: its rows of the global table; SPEC: its private table)
          and the global tokenizer restricted to the pieces that table covers, so the ids it
          never trained on exist for no consumer (transformers, vLLM, ...: they read only the
          weights and tokenizer.json)
  own     the private table and the source's own tokenizer (spec_opt)
"""
from __future__ import annotations

import json
import os
import sys
from typing import NamedTuple

import jax
import numpy as np
from tokenizers import Tokenizer

from dept_jax import dept, experiment, generate, hf_export, hf_tokenizer, variants
from dept_jax.config_lib import ConfigError
from dept_jax.data import tokenizers


class SourceModel(NamedTuple):
  """One source's complete model as host numpy pytrees. token_ids (TRIM/SPEC): the global id each
  row of embed stands for (row i: the tokenizer's piece token_ids[i]); None: rows are the
  tokenizer's ids."""
  body: dict
  embed: dict
  vocab_size: int
  tokenizer: str | None
  token_ids: np.ndarray | None = None


def source_model(exp, state, name: str) -> SourceModel:
  if name not in exp.names:
    raise ConfigError(f"--source: unknown source '{name}'. This run's sources: "
                      f"{', '.join(exp.names)}.")
  k = exp.names.index(name)
  rule = variants.get(exp.config.variant).export
  body, embed = dept.source_params(state, exp.config.variant, exp.vocab, k, None)
  body, embed = jax.tree.map(np.asarray, jax.device_get((body, embed)))
  toks = exp.data.tokenizers
  if rule == "own":
    return SourceModel(body, embed, exp.vocab.sizes[k], toks.get(name))
  if rule == "global":
    G = exp.data.global_vocab_size
    return SourceModel(body, jax.tree.map(lambda t: t[:G], embed), G, toks.get(name))
  V = exp.vocab.sizes[k]  # owned: the source's own rows
  return SourceModel(body, jax.tree.map(lambda t: t[:V], embed), V, toks.get(name),
                     _owned_ids(exp, k))


def _tokenizer(exp, m: SourceModel, workdir: str) -> tokenizers.Tokenizer:
  """The source's tokenizer as the run reads it (its EOS choice included)."""
  if not m.tokenizer or not os.path.exists(m.tokenizer):
    raise ConfigError(f"the run in {workdir} has no tokenizer for this source (synthetic data "
                      "has none). Fix: export a run trained on text (e.g. configs/demo.py).")
  return tokenizers.load(m.tokenizer, exp.config.data.get("eos_token", ""))


def export(workdir: str, source: str, out: str, step: int | None = None,
           overwrite: bool = False) -> dict:
  hf_export.check_out_dir(out, overwrite)  # before the run is loaded
  exp, state, got = experiment.load_run(workdir, step)
  m = source_model(exp, state, source)
  eval_path = os.path.join(workdir, "eval.json")
  evals = None
  if os.path.exists(eval_path):
    with open(eval_path) as f:
      final = json.load(f)["final"]
    evals = {k.split("/")[-1]: v for k, v in final.items() if k.startswith(f"eval/{source}/")}
  info = hf_export.export_source(
      out, m.body, m.embed, m.vocab_size, exp.config.model, _tokenizer(exp, m, workdir),
      variant=exp.config.variant, source_name=source, sources=exp.names, eval_results=evals,
      overwrite=overwrite, max_position_embeddings=max(2048, exp.config.seq_len),
      token_ids=m.token_ids)
  print(f"[dept_jax] exported source '{source}' (step {got}, {info['num_params']:,} parameters) "
        f"to {out}", flush=True)
  return info


def _owned_ids(exp, k: int) -> np.ndarray:
  """A trimmed vocabulary (TRIM/SPEC): the global ids source k's table covers, in local id order."""
  return exp.data.local_to_global[k, :exp.vocab.sizes[k]]


def generate_text(workdir: str, source: str, prompt: str, *, step=None, max_new_tokens=64,
                  temperature=0.8, top_k=0, top_p=1.0, seed=0) -> str:
  """The prompt and its continuation, encoded and decoded by the tokenizer the source's export
  carries (`hf_tokenizer.for_export`), so the exported model in transformers, given the same ids,
  generates the same text."""
  generate.check_sampling(max_new_tokens, temperature, top_k, top_p)  # before the run is loaded
  exp, state, _ = experiment.load_run(workdir, step)
  m = source_model(exp, state, source)
  tok = hf_tokenizer.for_export(_tokenizer(exp, m, workdir), m.token_ids)
  eos = tok.id_of("eos")
  ids = tok.tokenizer.encode(prompt, add_special_tokens=False).ids or [eos]
  context = exp.config.seq_len
  if len(ids) + max_new_tokens > context:
    print(f"[dept_jax] warning: the prompt ({len(ids)} tokens) plus max_new_tokens "
          f"({max_new_tokens}) run past the {context}-token context the model was trained on; "
          "positions beyond it were never trained, so expect worse text there.",
          file=sys.stderr, flush=True)
  # The model reads table rows: the tokenizer's ids for the source's own pieces (TRIM/SPEC: a
  # piece it never trained on reads its unknown-token row, as in training); samples are rows
  # < vocab_size, which are those same ids.
  new = generate.generate(m.body, m.embed, m.vocab_size, exp.config.model,
                          tok.rows[ids].tolist(), max_new_tokens=max_new_tokens,
                          temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                          eos_id=int(tok.rows[eos]))
  return prompt + continuation(tok.tokenizer, ids, [t for t in new if t != tok.rows[eos]])


def continuation(tok: Tokenizer, prompt_ids: list[int], new_ids: list[int]) -> str:
  """The text new_ids add after prompt_ids, decoded together with them: decoded alone, a first
  piece "▁software" loses its space (sentencepiece strips a leading one) and a character split
  across byte pieces is cut."""
  head = tok.decode(prompt_ids, skip_special_tokens=False)
  full = tok.decode(list(prompt_ids) + list(new_ids), skip_special_tokens=False)
  return full[len(os.path.commonprefix([head, full])):]
