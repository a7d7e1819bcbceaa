"""What a DEPT run is made of before any step: each source's vocabulary, the rows of its table,
the fixed Layout that dept's pure functions are bound to, the shardings of the state, and which
sources train in each round."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from dept_jax import model, optim, variants
from dept_jax.config_lib import ConfigError, num_slots
from dept_jax.mesh import replicated, tree_shardings


@dataclasses.dataclass(frozen=True)
class Vocab:
  """What the core needs to know about each source's vocabulary.

  sizes: local vocabulary size of each source (rows past it are padding, never in the softmax).
  local_to_global: [K, rows] global id of each local id, -1 for padding; shared tables only.
  global_size: size of the global table (glob/trim/std).
  """
  sizes: tuple[int, ...]
  local_to_global: np.ndarray | None = None
  global_size: int | None = None

  @property
  def rows(self) -> int:
    return max(self.sizes)

  @property
  def num_sources(self) -> int:
    return len(self.sizes)


def check_vocab(variant, vocab: Vocab):
  """A vocabulary that does not fit the variant fails here, before anything compiles."""
  rules = variants.get(variant)
  if rules.table.in_global:
    if vocab.local_to_global is None or vocab.global_size is None:
      raise ConfigError(f"variant '{rules.name}' needs each source's local->global id map and the "
                        "global vocabulary size; build the data with a global tokenizer")
    l2g = vocab.local_to_global
    if l2g.shape != (vocab.num_sources, vocab.rows):
      raise ConfigError(f"local_to_global has shape {l2g.shape}, expected "
                        f"({vocab.num_sources}, {vocab.rows})")
    for k, size in enumerate(vocab.sizes):
      if size <= 0:
        raise ConfigError(f"source {k} has an empty vocabulary; its data produced no tokens")
      ids = l2g[k, :size]
      if ids.min() < 0 or ids.max() >= vocab.global_size:
        raise ConfigError(f"source {k}: local->global ids outside [0, {vocab.global_size}); "
                          "the trimmed vocabulary does not match the global tokenizer")
      if len(np.unique(ids)) != size:
        raise ConfigError(f"source {k}: local->global map repeats a global id")
  if rules.mixture and vocab.num_sources != 1:
    raise ConfigError(f"{rules.name} trains one model on the mixture: pass Vocab with one entry")


def table_rows(vocab_size: int, mesh, cfg) -> int:
  """Rows of an embedding table indexing `vocab_size` ids: the one place the row count is chosen.
  Rows are padded to a multiple of model.vocab_multiple (hardware-friendly shapes) and of `tensor`
  (tables shard their rows over it); padding rows are masked out of the softmax like any row past
  a source's vocabulary."""
  multiple = math.lcm(int(cfg.get("vocab_multiple", 1)), mesh.shape["tensor"])
  return -(-int(vocab_size) // multiple) * multiple


@dataclasses.dataclass(frozen=True, eq=False)
class Layout:
  """The fixed facts of a run that the pure functions are bound to (functools.partial)."""
  variant: variants.Variant
  model: Any  # FrozenConfigDict
  sources: int  # K
  slots: int  # S: sources training at once
  slices: int  # source slices of the mesh
  rows: int  # rows of each source's (local) table
  global_rows: int | None  # rows of the global table (tables in `global`)
  local_to_global: Any  # [K, rows] int32 global row of each local row; padding -> global_rows
  metric_sources: int
  banked: bool
  tx: optax.GradientTransformation
  outer_tx: optax.GradientTransformation
  schedule: Callable
  fedavg: bool
  freeze_body: bool
  reset_inner_state: bool
  local_slots: str

  @property
  def per_slice(self) -> int:
    return self.slots // self.slices

  @property
  def sources_per_slice(self) -> int:
    return self.sources // self.slices


def state_shardings(abstract, mesh, lay: Layout):
  body_axes = model.body_axes(lay.model)
  slot_params = {"body": tree_shardings(mesh, body_axes, stacked=True),
                 "embed": tree_shardings(mesh, model.embed_axes(lay.model, lay.rows), stacked=True)}

  def opt_shardings(opt_abstract, params_sh, leading):
    """Optimizer leaves mirror the params they track; scalars (counts) follow `leading`."""
    flat_params = {jax.tree_util.keystr(p): s for p, s in
                   jax.tree_util.tree_flatten_with_path(params_sh)[0]}

    def one(path, leaf):
      key = jax.tree_util.keystr(path)
      for pkey, sh in flat_params.items():
        if key.endswith(pkey) and len(sh.spec) == leaf.ndim:
          return sh
      return NamedSharding(mesh, P(*([leading] if leaf.ndim else []), *([None] * (leaf.ndim - 1))))
    return jax.tree_util.tree_map_with_path(one, opt_abstract)

  out = {"step": replicated(mesh), "skipped": NamedSharding(mesh, P("source")),
         "global": {"body": tree_shardings(mesh, body_axes)},
         "slots": {"params": slot_params,
                   "opt": opt_shardings(abstract["slots"]["opt"], slot_params, "source")}}
  if "embed" in abstract["global"]:
    out["global"]["embed"] = tree_shardings(mesh, model.embed_axes(lay.model, lay.global_rows))
  out["outer_opt"] = opt_shardings(abstract["outer_opt"], out["global"], None)
  if lay.banked:
    out["bank"] = jax.tree.map(
        lambda leaf: NamedSharding(mesh, P("source", *([None] * (leaf.ndim - 1)))), abstract["bank"])
  return out


def round_sources(round_index: int, seed: int, sources: int, slots: int, slices: int) -> np.ndarray:
  """S_t: which source each slot trains in round t. All sources when every one fits; else each
  source slice draws its share from its own sources (slice j holds sources j*K/n .. (j+1)*K/n - 1
  and their bank entries), so banks never move. Seeded by (seed, round)."""
  if slots == sources:
    return np.arange(sources, dtype=np.int32)
  per_slice, own = slots // slices, sources // slices
  rng = np.random.default_rng([seed, 104729, round_index])
  picks = [j * own + np.sort(rng.choice(own, size=per_slice, replace=False)) for j in range(slices)]
  return np.concatenate(picks).astype(np.int32)


def make_layout(config, mesh, vocab: Vocab, metric_sources: int | None = None) -> Layout:
  rules = variants.get(config.variant)
  check_vocab(rules, vocab)
  K = vocab.num_sources
  S = num_slots(config, K)
  slices = mesh.shape["source"]
  if S % slices:
    raise ConfigError(f"config.mesh.source: the mesh has {slices} source slices, which cannot "
                      f"split the {S} sources that train per round. Fix: leave mesh.source=-1.")
  banked = not rules.mixture and S < K
  if banked and K % slices:
    raise ConfigError(f"config.mesh.source: {slices} source slices cannot each keep an equal "
                      f"share of the {K} sources' banks. Fix: leave mesh.source=-1, or use a "
                      f"divisor of both {S} and {K}.")
  cfg = model.static_config(config.model)
  rows = table_rows(vocab.rows, mesh, cfg)
  G = table_rows(vocab.global_size, mesh, cfg) if vocab.global_size else None
  l2g = None
  if rules.table.in_global:
    # Padding ids (-1) become G: out of range, so take() fills zeros and scatters drop them.
    padded = np.full((K, rows), G, np.int32)
    padded[:, :vocab.rows] = np.where(vocab.local_to_global < 0, G, vocab.local_to_global)
    l2g = jnp.asarray(padded)
  return Layout(
      variant=rules, model=cfg, sources=K, slots=S, slices=slices, rows=rows, global_rows=G,
      local_to_global=l2g, metric_sources=metric_sources or K, banked=banked,
      tx=optim.inner_transform(config.optim), outer_tx=optim.outer_transform(config.outer),
      schedule=optim.lr_schedule(config.optim, config.steps),
      fedavg=config.outer.optimizer == "fedavg", freeze_body=bool(config.freeze_body),
      reset_inner_state=bool(config.outer.reset_inner_state),
      local_slots=config.get("local_slots", "loop"))
