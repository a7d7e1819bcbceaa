"""DEPT as pure, jitted functions over one state pytree.

State (a plain dict, so orbax saves it as is):
  step        local steps done (int32)
  global      {'body'} plus {'embed'} for the shared-table variants (glob, trim)
  outer_opt   outer optimizer state over `global`
  slots       {'params': {'body', 'embed'}, 'opt'}: one entry per `source` slice, leading axis
              sharded over `source`. Slot i trains source idx[i] this round.
  bank        only when fewer slices than sources: every source's private table and inner
              optimizer state, so sources that sit a round out keep theirs intact.

A round: begin_round (slots start from the global body and the variant's table) -> N local_step
(vmapped over slots; nothing crosses `source`) -> outer_step (mean over `source` of the
pseudo-gradients, then the outer optimizer). STD is one slot trained on the mixture, no rounds.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from dept_jax import model, optim
from dept_jax.config_lib import ConfigError, num_slots
from dept_jax.mesh import batch_sharding, replicated, tree_shardings

SHARED_TABLE_VARIANTS = ("glob", "trim")


@dataclasses.dataclass(frozen=True)
class Vocab:
  """What the core needs to know about each source's vocabulary.

  sizes: local vocabulary size of each source (rows past it are padding, never in the softmax).
  local_to_global: [K, rows] global id of each local id, -1 for padding; glob/trim only.
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


def check_vocab(variant: str, vocab: Vocab):
  """A vocabulary that does not fit the variant fails here, before anything compiles."""
  if variant in SHARED_TABLE_VARIANTS:
    if vocab.local_to_global is None or vocab.global_size is None:
      raise ConfigError(f"variant '{variant}' needs each source's local->global id map and the "
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
  if variant == "std" and vocab.num_sources != 1:
    raise ConfigError("std trains one model on the mixture: pass Vocab with one entry")


class Program(NamedTuple):
  """The compiled-on-first-use pieces of a DEPT run, all pure functions of the state."""
  init: Callable  # key -> state
  begin_round: Callable  # (state, slot_sources[S]) -> state
  local_step: Callable  # (state, batch) -> (state, metrics)
  outer_step: Callable  # (state, slot_sources[S], weights[S]) -> (state, metrics)
  state_shardings: Any
  abstract_state: Any  # ShapeDtypeStructs carrying shardings (restore targets)
  batch_shardings: Any
  slots: int
  uses_bank: bool


def _stack(tree, n):
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), tree)


def _weighted_mean(stacked, w_S):
  """Weighted mean over the leading (source) axis; under jit this is the cross-source reduce."""
  w_S = w_S / w_S.sum()
  return jax.tree.map(
      lambda x: jnp.tensordot(w_S.astype(x.dtype), x, axes=1), stacked)


def build(config, mesh, vocab: Vocab, metric_sources: int | None = None) -> Program:
  """metric_sources: how many sources the per-source metrics count (STD's one slot sees them all)."""
  variant = config.variant
  check_vocab(variant, vocab)
  cfg = config.model
  K = vocab.num_sources
  S = num_slots(config, K) if variant != "std" else 1
  if S % mesh.shape["source"]:
    raise ConfigError(f"config.mesh.source: the mesh has {mesh.shape['source']} source slices, "
                      f"which cannot split the {S} sources that train per round. Fix: leave "
                      "mesh.source=-1.")
  n_metric = metric_sources or K
  shared = variant in SHARED_TABLE_VARIANTS
  # Fewer slices than sources: a bank keeps every source's inner optimizer state (and, for the
  # private-table variants, its table) while the source sits a round out.
  uses_bank = variant != "std" and S < K
  # Tables shard their vocabulary over `tensor`: pad rows to a multiple of it. Padding rows are
  # masked out of the softmax like any row past a source's vocabulary.
  tensor = mesh.shape["tensor"]
  rows = -(-vocab.rows // tensor) * tensor
  G = -(-vocab.global_size // tensor) * tensor if vocab.global_size else None
  # Padding ids (-1) become G: out of range, so take() fills zeros and scatters drop them
  # (a negative index would wrap around to the last global row).
  l2g = None
  if shared:
    l2g = np.full((K, rows), G, np.int32)
    l2g[:, :vocab.rows] = np.where(vocab.local_to_global < 0, G, vocab.local_to_global)
    l2g = jnp.asarray(l2g)
  tx = optim.inner_transform(config.optim)
  outer_tx = optim.outer_transform(config.outer)
  schedule = optim.lr_schedule(config.optim, config.steps)

  body_axes = model.axes_from_spec(model.body_spec(cfg))
  embed_axes = model.axes_from_spec(model.embed_spec(cfg, rows))

  # ------------------------------------------------------------------ init
  def local_table(global_embed, k):
    """Rows of the global table a source owns, in its local id order; padding rows are zero."""
    return jax.tree.map(
        lambda t: jnp.take(t, l2g[k], axis=0, mode="fill", fill_value=0), global_embed)

  def init(key):
    k_body, k_embed = jax.random.split(key)
    body = model.init_body(cfg, k_body)
    state = {"step": jnp.zeros((), jnp.int32), "skipped": jnp.zeros((S,), jnp.int32),
             "global": {"body": body}}
    slot_ids = jnp.arange(S) % K
    if shared:
      state["global"]["embed"] = model.init_embed(cfg, G, k_embed)
      slot_embed = jax.vmap(lambda k: local_table(state["global"]["embed"], k))(slot_ids)
    else:
      n_tables = K if variant != "std" else 1
      tables = jax.vmap(lambda k: model.init_embed(cfg, rows, k))(
          jax.random.split(k_embed, n_tables))
      slot_embed = jax.tree.map(lambda t: t[:S], tables)
    params = {"body": _stack(body, S), "embed": slot_embed}
    opt = jax.vmap(tx.init)(params)
    state["slots"] = {"params": params, "opt": opt}
    state["outer_opt"] = outer_tx.init(state["global"])
    if uses_bank:
      bank_embed = (jax.vmap(lambda k: local_table(state["global"]["embed"], k))(jnp.arange(K))
                    if shared else tables)
      state["bank"] = {"opt": jax.vmap(tx.init)({"body": _stack(body, K),
                                                        "embed": bank_embed})}
      if not shared:
        state["bank"]["embed"] = tables
    return state

  # ------------------------------------------------------------------ shardings
  abstract = jax.eval_shape(init, jax.random.key(0))
  body_sh = tree_shardings(mesh, body_axes)
  slot_params_sh = {"body": tree_shardings(mesh, body_axes, stacked=True),
                    "embed": tree_shardings(mesh, embed_axes, stacked=True)}

  def opt_shardings(opt_abstract, params_sh, stacked_spec):
    """Optimizer leaves mirror the params they track; scalars (counts) follow the source axis."""
    flat_params = {jax.tree_util.keystr(p): s for p, s in
                   jax.tree_util.tree_flatten_with_path(params_sh)[0]}
    def one(path, leaf):
      key = jax.tree_util.keystr(path)
      for pkey, sh in flat_params.items():
        if key.endswith(pkey) and len(sh.spec) == leaf.ndim:
          return sh
      return NamedSharding(mesh, stacked_spec(leaf.ndim))
    return jax.tree_util.tree_map_with_path(one, opt_abstract)

  per_slot = lambda nd: P("source", *([None] * (nd - 1))) if nd else P()
  shardings = {
      "step": replicated(mesh),
      "skipped": NamedSharding(mesh, P("source")),
      "global": {"body": body_sh},
      "slots": {"params": slot_params_sh,
                "opt": opt_shardings(abstract["slots"]["opt"], slot_params_sh, per_slot)},
  }
  if shared:
    shardings["global"]["embed"] = tree_shardings(mesh, model.axes_from_spec(
        model.embed_spec(cfg, G)))
  shardings["outer_opt"] = opt_shardings(abstract["outer_opt"], shardings["global"],
                                         lambda nd: P(*([None] * nd)))
  if uses_bank:
    # The bank's leading axis is sources, not slices: spread it over `source` when it divides.
    bank_axis = "source" if K % mesh.shape["source"] == 0 else None
    def bank_sh(leaf):
      return NamedSharding(mesh, P(bank_axis, *([None] * (leaf.ndim - 1))))
    shardings["bank"] = jax.tree.map(bank_sh, abstract["bank"])
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
  init_jit = jax.jit(init, out_shardings=shardings)

  # ------------------------------------------------------------------ round start
  def begin_round(state, slot_sources_S):
    state = dict(state)
    slots = {"params": dict(state["slots"]["params"]), "opt": state["slots"]["opt"]}
    slots["params"]["body"] = _stack(state["global"]["body"], S)
    if shared:
      slots["params"]["embed"] = jax.vmap(lambda k: local_table(state["global"]["embed"], k))(
          slot_sources_S)
    if uses_bank:
      take = lambda t: jnp.take(t, slot_sources_S, axis=0)
      if not shared:
        slots["params"]["embed"] = jax.tree.map(take, state["bank"]["embed"])
      slots["opt"] = jax.tree.map(take, state["bank"]["opt"])
    if config.outer.reset_inner_state:
      slots["opt"] = jax.vmap(tx.init)(slots["params"])
    state["slots"] = slots
    return state

  # ------------------------------------------------------------------ local step
  n_slices = mesh.shape["source"]
  per_slice = S // n_slices

  def _over_slots(fn, *args):
    """fn over the leading slot axis. One slot per source slice: vmap (the slot axis is the
    sharded one). Several slots sharing a slice (e.g. all sources on one CPU): vmap over slices,
    and a loop over the slots inside each: on CPU the loop ran the demo's 6 sources 1.2x faster
    than batching their matmuls, though tiny's 4 ran 0.76x as fast (bench/RESULTS.md);
    local_slots='vmap' batches them."""
    if S == 1:  # STD, or one source: a vmap over one slot ran the CPU step 13-14% slower
      return jax.tree.map(lambda x: x[None], fn(*jax.tree.map(lambda x: x[0], args)))
    if per_slice == 1 or config.get("local_slots", "loop") == "vmap":
      return jax.vmap(fn)(*args)
    split = lambda x: x.reshape((n_slices, per_slice) + x.shape[1:])
    merge = lambda x: x.reshape((S,) + x.shape[2:])
    out = jax.vmap(lambda *a: jax.lax.map(lambda b: fn(*b), a))(*jax.tree.map(split, args))
    return jax.tree.map(merge, out)

  def one_source_step(params, opt, inputs, targets, source_ids, vocab_size, lr):
    (loss, aux), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(
        params, {"inputs": inputs, "targets": targets}, vocab_size, cfg)
    if config.freeze_body:  # continued pre-training of a new table on a fixed body
      grads = dict(grads, body=jax.tree.map(jnp.zeros_like, grads["body"]))
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_updates, new_opt = tx.update(grads, opt, params)
    # A non-finite loss or gradient keeps the previous params and moments (selected per source,
    # inside the update's own elementwise pass).
    keep = lambda new, old: jnp.where(finite, new, old)
    new_params = jax.tree.map(lambda p, u: keep(p - lr * u, p), params, new_updates)
    params = dict(new_params, body=params["body"]) if config.freeze_body else new_params
    opt = jax.tree.map(keep, new_opt, opt)
    by_source = jax.nn.one_hot(source_ids, n_metric, dtype=jnp.float32)  # [B, K]
    metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite,
               "nll_by_source": aux["nll_per_row"] @ by_source,
               "tokens_by_source": aux["tokens_per_row"].astype(jnp.float32) @ by_source}
    return params, opt, metrics

  def local_step(state, batch):
    """batch: inputs/targets [S, B, L], source_ids [S, B] (each row's source), vocab [S].

    A source whose loss or gradient is not finite keeps its previous params and moments and
    counts the skip in its own `skipped` entry; the trainer decides whether to stop. Nothing
    here reduces over slots, so the compiled step has no collective across `source`.
    """
    lr = schedule(state["step"])
    step_fn = lambda *a: one_source_step(*a, lr)
    params, opt, metrics = _over_slots(
        step_fn, state["slots"]["params"], state["slots"]["opt"], batch["inputs"],
        batch["targets"], batch["source_ids"], batch["vocab_size"])
    finite_S = metrics["finite"]
    state = dict(state, slots={"params": params, "opt": opt}, step=state["step"] + 1,
                 skipped=state["skipped"] + (~finite_S).astype(jnp.int32))
    return state, dict(metrics, lr=lr)

  # ------------------------------------------------------------------ outer step
  def outer_step(state, slot_sources_S, weights_S):
    """Average what the variant shares, apply the outer optimizer, return the new state."""
    state = dict(state)
    params = state["slots"]["params"]
    glob = state["global"]
    pseudo = {"body": jax.tree.map(lambda g, m: g - m, glob["body"],
                                   _weighted_mean(params["body"], weights_S))}
    if shared:
      # Owner weight of each global row, from replicated inputs only (no cross-source traffic).
      ids_S = l2g[slot_sources_S]
      w_rows = jnp.broadcast_to(weights_S[:, None], ids_S.shape)
      owners = jnp.zeros((G,), jnp.float32).at[ids_S].add(w_rows, mode="drop")

      def row_delta(g_table, local_S):
        # Each source's delta lands on the global rows it owns; divide by the owners' weight.
        def one(k, local_table_k, w):
          delta = jnp.take(g_table, l2g[k], axis=0, mode="fill", fill_value=0) - local_table_k
          return jnp.zeros_like(g_table).at[l2g[k]].add(w * delta, mode="drop")
        summed = jax.vmap(one)(slot_sources_S, local_S, weights_S).sum(0)
        return summed / jnp.maximum(owners, 1e-12)[:, None].astype(g_table.dtype), owners > 0
      deltas = jax.tree.map(row_delta, glob["embed"], params["embed"])
      pseudo["embed"] = jax.tree.map(lambda d: d[0], deltas, is_leaf=lambda x: isinstance(x, tuple))
      owned = jax.tree.map(lambda d: d[1], deltas, is_leaf=lambda x: isinstance(x, tuple))
    updates, outer_opt = outer_tx.update(pseudo, state["outer_opt"], glob)
    new_global = {"body": glob["body"] if config.freeze_body else
                  optax.apply_updates(glob["body"], updates["body"])}
    if shared:
      # Rows no participating source owns stay exactly as they were.
      new_global["embed"] = jax.tree.map(
          lambda g, u, o: jnp.where(o[:, None], g + u, g), glob["embed"], updates["embed"], owned)
    state["global"], state["outer_opt"] = new_global, outer_opt
    if uses_bank:
      bank = state["bank"]
      put = lambda bank, slot: bank.at[slot_sources_S].set(slot)
      state["bank"] = {"opt": jax.tree.map(put, state["bank"]["opt"], state["slots"]["opt"])}
      if not shared:
        state["bank"]["embed"] = jax.tree.map(put, bank["embed"], params["embed"])
    metrics = {"outer/pseudo_grad_norm": optax.tree.norm(pseudo["body"])}
    return state, metrics

  batch_sh = {"inputs": batch_sharding(mesh), "targets": batch_sharding(mesh),
              "source_ids": NamedSharding(mesh, P("source", ("data", "fsdp"))),
              "vocab_size": NamedSharding(mesh, P("source"))}
  slot_vec = NamedSharding(mesh, P())
  return Program(
      init=init_jit,
      begin_round=jax.jit(begin_round, in_shardings=(shardings, slot_vec),
                          out_shardings=shardings, donate_argnums=0),
      local_step=jax.jit(local_step, in_shardings=(shardings, batch_sh),
                         out_shardings=(shardings, None), donate_argnums=0),
      outer_step=jax.jit(outer_step, in_shardings=(shardings, slot_vec, slot_vec),
                         out_shardings=(shardings, None), donate_argnums=0),
      state_shardings=shardings,
      abstract_state=abstract,
      batch_shardings=batch_sh,
      slots=S,
      uses_bank=uses_bank,
  )


def outer_payload_bytes(program_or_state) -> int:
  """Bytes one source sends at an outer step if it has its own slice: the body, plus the global
  table for glob/trim (its owned rows, at most the whole table). The HLO check measures the same."""
  state = getattr(program_or_state, "abstract_state", program_or_state)
  shared = state["global"]
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(shared))


def source_params(state, variant: str, vocab: Vocab, source: int, slot: int | None):
  """One source's (body, embed) as a complete model.

  slot=None: the global body with the table the variant gives the source (shared variants: its
  rows of the global table; private: its own table, from the bank or its slot). Otherwise the
  local model currently training in that slot.
  """
  take = lambda tree, i: jax.tree.map(lambda x: x[i], tree)
  slots = state["slots"]["params"]
  if slot is not None:
    return take(slots["body"], slot), take(slots["embed"], slot)
  if variant == "std":
    return take(slots["body"], 0), take(slots["embed"], 0)
  body = state["global"]["body"]
  if variant in SHARED_TABLE_VARIANTS:
    l2g = vocab.local_to_global[source]

    def rows_of(table):  # padding ids point past the (padded) table, so take() fills zeros
      ids = jnp.asarray(np.where(l2g < 0, table.shape[0], l2g))
      return jnp.take(table, ids, axis=0, mode="fill", fill_value=0)
    return body, jax.tree.map(rows_of, state["global"]["embed"])
  if "bank" in state and "embed" in state["bank"]:
    return body, take(state["bank"]["embed"], source)
  return body, take(slots["embed"], source)


def make_batch_jnp(tokens):
  """As make_batch, inside jit: token windows [..., L+1] -> inputs/targets (-1 = padding)."""
  return {"inputs": jnp.maximum(tokens[..., :-1], 0), "targets": tokens[..., 1:]}


def make_batch(tokens_SxBxL1: np.ndarray, source_ids_SxB: np.ndarray, vocab_S: np.ndarray):
  """Host token windows [S, B, L+1] -> the step's batch dict (targets shifted by one)."""
  tokens = np.asarray(tokens_SxBxL1, np.int32)
  return {"inputs": np.maximum(tokens[..., :-1], 0), "targets": tokens[..., 1:],
          "source_ids": np.asarray(source_ids_SxB, np.int32),
          "vocab_size": np.asarray(vocab_S, np.int32)}
