"""Per-source evaluation on held-out text: loss and perplexity in the source's own tokens, and bits
per byte, the one number comparable across tokenizers:

  bits_per_byte = total NLL in nats / (UTF-8 bytes of the evaluated text * ln 2)

TRIM and SPEC score a held-out token their source does not own as that source's <unk>. That does
not flatter them: <unk> is never a training target, so it gets almost no probability, and such a
target costs more than the true token costs a full-vocabulary model (measured on the built-in
corpus: 10-12 nats under TRIM against 9-10 under GLOB at the same positions; bench/RESULTS.md).
Such targets are rare (`unowned_rate`, reported next to bits per byte: at most 0.02% there), so the
penalty is slight (under 0.001 bits per byte there).
"""
from __future__ import annotations

import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from dept_jax import dept, metrics_io, model, variants
from dept_jax.mesh import fitted_shardings


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
  return nll_nats / (max(n_bytes, 1) * math.log(2))


def summarize(nll: float, tokens: int, n_bytes: int) -> dict:
  loss = nll / max(tokens, 1)
  return {"loss": loss, "perplexity": math.exp(min(loss, 80.0)),
          "bits_per_byte": bits_per_byte(nll, n_bytes), "tokens": int(tokens), "bytes": int(n_bytes)}


@functools.partial(jax.jit, static_argnums=(4,))
def _nll(body, embed, tokens, vocab_size, cfg):
  batch = dept.make_batch_jnp(tokens)
  nll, mask = model.token_nll(body, embed, batch["inputs"], batch["targets"], vocab_size, cfg)
  return nll.sum(), mask.sum()


def evaluate_source(body, embed, vocab_size: int, cfg, batches) -> dict:
  """Sum NLL and tokens over a source's eval batches ({'tokens', 'bytes'[, 'unowned_targets']})."""
  nll = tok = nbytes = unowned = 0
  for b in batches:
    s, t = _nll(body, embed, jnp.asarray(b["tokens"], jnp.int32), vocab_size, model.static_config(cfg))
    nll += float(s)
    tok += int(t)
    nbytes += int(b["bytes"])
    unowned += int(b.get("unowned_targets", 0))
  out = summarize(nll, tok, nbytes)
  if any("unowned_targets" in b for b in batches):
    out["unowned_rate"] = unowned / max(tok, 1)
  return out


class Evaluator:
  """Evaluates every source of a run and keeps the history for eval.json and the plot."""

  def __init__(self, exp):
    self.exp = exp
    self.one_model = variants.get(exp.config.variant).eval_model == "mixture"
    # Each source sizes its own eval set (text: the same held-out bytes for every tokenizer); the
    # mixture model reads every source's held-out text in global ids.
    self.batches = (exp.data.global_eval_batches if self.one_model
                    else [s.eval_batches for s in exp.data.sources])
    self.history = []

  def _shardings(self, body, embed):
    """One source's model spread over the whole mesh by the training layout (embed dim over fsdp,
    heads/mlp/vocab over tensor), not copied onto every device: it fits wherever training did."""
    cfg = self.exp.config.model
    axes = {"body": model.body_axes(cfg), "embed": model.embed_axes(cfg, embed["table"].shape[0])}
    sh = fitted_shardings(self.exp.mesh, axes, {"body": body, "embed": embed})
    return sh["body"], sh["embed"]

  def run(self, state, slot_sources, after_outer: bool) -> dict:
    exp = self.exp
    c = exp.config
    out = {}
    for k, name in enumerate(exp.names):
      if after_outer:
        slot = None
      else:
        where = np.nonzero(np.asarray(slot_sources) == k)[0]
        if not len(where):
          continue  # sitting this round out: its model did not change
        slot = int(where[0])
      body, embed = dept.source_params(state, c.variant, exp.vocab, k, slot)
      body, embed = jax.device_put((body, embed), self._shardings(body, embed))
      vocab_size = exp.vocab.sizes[0] if self.one_model else exp.vocab.sizes[k]
      res = evaluate_source(body, embed, vocab_size, c.model, self.batches[k])
      for key in ("loss", "perplexity", "bits_per_byte", "unowned_rate"):
        if key in res:
          out[f"eval/{name}/{key}"] = res[key]
    step = int(jax.device_get(state["step"]))
    self.history.append({"step": step, "global": after_outer, **out})
    return out

  def load_history(self, workdir: str, upto_step: int):
    """A resumed run continues the history its earlier part wrote (evals up to the restored step;
    later ones belong to steps the run is about to redo)."""
    path = os.path.join(workdir, "eval.json")
    if os.path.exists(path):
      with open(path) as f:
        earlier = json.load(f).get("history", [])
      self.history = [h for h in earlier if h.get("step", 0) <= upto_step] + self.history

  def save(self, workdir: str):
    """WORKDIR/eval.json: the latest evaluation and the whole history (written atomically)."""
    if not metrics_io.is_writer() or not self.history:
      return
    path = os.path.join(workdir, "eval.json")
    with open(path + ".tmp", "w") as f:
      json.dump({"final": self.history[-1], "history": self.history}, f, indent=2)
    os.replace(path + ".tmp", path)
