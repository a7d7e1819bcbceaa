"""DEPT as short, pure functions over one state pytree, bound once with functools.partial and jitted.

State (a plain dict, so orbax saves it as is):
  step        local steps done (int32)
  skipped     [S] updates dropped for a non-finite loss or gradient, per slot
  global      {'body'} plus {'embed'} when the variant's table lives in one global table
  outer_opt   outer optimizer state over `global`
  slots       {'params': {'body', 'embed'}, 'opt'}: one entry per slot, the leading axis sharded
              over `source`. Slot i trains source slot_sources[i] this round.
  bank        only when fewer slots than sources: every source's inner optimizer state (and its
              private table), leading axis sharded over `source` so source k's entry lives on the
              slice that trains it (round_sources only ever sends k there): no bank traffic.

A round: begin_round (slots start from the global body and the variant's table) -> N local_step
-> outer_step. begin_round and local_step run under `jax.shard_map` over `source`: each slice sees
only its own slots, so nothing they do can cross `source`. outer_step is the one function that
communicates: an explicit `jax.lax.psum` over `source` of the weighted bodies (and the variant's
table contributions), divided by the total weight. STD is one slot trained on the mixture.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from dept_jax import model, variants
from dept_jax.layout import (Layout, Vocab, check_vocab, make_layout, round_sources,  # noqa: F401
                             state_shardings, table_rows)
from dept_jax.mesh import batch_sharding

PER_SLICE = P("source")  # a leading axis split over source slices (slots, bank, per-slot metrics)
SAME = P()  # the same value on every source slice


class Program(NamedTuple):
  """The jitted pieces of a DEPT run, all pure functions of the state."""
  init: Callable  # key -> state
  begin_round: Callable  # (state, slot_sources[S]) -> state
  local_step: Callable  # (state, batch) -> (state, metrics)
  outer_step: Callable  # (state, slot_sources[S], weights[S]) -> (state, metrics)
  state_shardings: Any
  abstract_state: Any  # ShapeDtypeStructs carrying shardings (restore targets)
  batch_shardings: Any
  slots: int
  uses_bank: bool
  layout: Layout


def _on_slices(fn, mesh, in_specs, out_specs):
  """fn run by every source slice on its own share of the arguments (jax.shard_map over `source`).
  The axes inside a slice stay automatic (XLA partitions data/fsdp/tensor as under plain jit);
  when a slice is a single device they are manual too, which changes nothing but spares the
  partitioner: the step then computes bit for bit what a plain jit of it does (partial-auto
  shard_map on one CPU device changed the last bits of the gradients)."""
  one_device = all(mesh.shape[a] == 1 for a in mesh.axis_names if a != "source")
  manual = set(mesh.axis_names) if one_device else {"source"}
  return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, axis_names=manual)


def _stack(tree, n):
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), tree)


def _take(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


# ----------------------------------------------------------------------------- init


def init_state(key, lay: Layout):
  k_body, k_embed = jax.random.split(key)
  cfg, S = lay.model, lay.slots
  body = model.init_body(cfg, k_body)
  global_table, tables_K = lay.variant.table.init(cfg, k_embed, lay)
  slot_ids = jnp.arange(S) % lay.sources
  state = {"step": jnp.zeros((), jnp.int32), "skipped": jnp.zeros((S,), jnp.int32),
           "global": {"body": body}}
  if global_table is not None:
    state["global"]["embed"] = global_table
  slot_tables = (_take(tables_K, slot_ids) if tables_K is not None else
                 lay.variant.table.round_start(global_table, None, slot_ids, lay))
  params = {"body": _stack(body, S), "embed": slot_tables}
  state["slots"] = {"params": params, "opt": jax.vmap(lay.tx.init)(params)}
  state["outer_opt"] = lay.outer_tx.init(state["global"])
  if lay.banked:
    every = jnp.arange(lay.sources)
    bank_tables = (tables_K if tables_K is not None else
                   lay.variant.table.round_start(global_table, None, every, lay))
    state["bank"] = {"opt": jax.vmap(lay.tx.init)({"body": _stack(body, lay.sources),
                                                   "embed": bank_tables})}
    if tables_K is not None:
      state["bank"]["embed"] = tables_K
  return state


# ----------------------------------------------------------------------------- round start


def _my_share(vec_S, lay: Layout):
  """This slice's entries of a per-slot vector given whole to every slice (inside shard_map)."""
  start = jax.lax.axis_index("source") * lay.per_slice
  return jax.lax.dynamic_slice_in_dim(vec_S, start, lay.per_slice)


def _bank_index(sources_S, lay: Layout):
  """Where this slice keeps each of its slots' sources in its part of the bank."""
  return sources_S - jax.lax.axis_index("source") * lay.sources_per_slice


def begin_round_on_slice(slots, global_, bank, slot_sources_S, lay: Layout):
  """One slice: its slots start from the global body, and the table the variant gives them."""
  mine = _my_share(slot_sources_S, lay)
  kept, opt = slots["params"]["embed"], slots["opt"]
  if lay.banked:
    at = _bank_index(mine, lay)
    opt = _take(bank["opt"], at)
    if "embed" in bank:
      kept = _take(bank["embed"], at)
  params = {"body": _stack(global_["body"], lay.per_slice),
            "embed": lay.variant.table.round_start(global_.get("embed"), kept, mine, lay)}
  if lay.reset_inner_state:
    opt = jax.vmap(lay.tx.init)(params)
  return {"params": params, "opt": opt}


def begin_round(state, slot_sources_S, *, lay: Layout, mesh):
  on_slices = _on_slices(functools.partial(begin_round_on_slice, lay=lay), mesh,
                         in_specs=(PER_SLICE, SAME, PER_SLICE, SAME), out_specs=PER_SLICE)
  slots = on_slices(state["slots"], state["global"], state.get("bank", {}), slot_sources_S)
  return dict(state, slots=slots)


# ----------------------------------------------------------------------------- local step


def one_source_step(params, opt, inputs, targets, source_ids, vocab_size, lr, lay: Layout):
  """One AdamW step of one source's model on its own batch."""
  (loss, aux), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(
      params, {"inputs": inputs, "targets": targets}, vocab_size, lay.model)
  if lay.freeze_body:  # continued pre-training of a new table on a fixed body
    grads = dict(grads, body=jax.tree.map(jnp.zeros_like, grads["body"]))
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  new_updates, new_opt = lay.tx.update(grads, opt, params)
  # A non-finite loss or gradient keeps the previous params and moments (selected per source,
  # inside the update's own elementwise pass).
  keep = lambda new, old: jnp.where(finite, new, old)
  new_params = jax.tree.map(lambda p, u: keep(p - lr * u, p), params, new_updates)
  params = dict(new_params, body=params["body"]) if lay.freeze_body else new_params
  opt = jax.tree.map(keep, new_opt, opt)
  by_source = jax.nn.one_hot(source_ids, lay.metric_sources, dtype=jnp.float32)  # [B, K]
  metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite,
             "nll_by_source": aux["nll_per_row"] @ by_source,
             "tokens_by_source": aux["tokens_per_row"].astype(jnp.float32) @ by_source}
  return params, opt, metrics


def _over_local_slots(fn, lay: Layout, *args):
  """fn over this slice's slots (leading axis). One slot: called directly, no vmap of one.
  Several (e.g. every source on one CPU): a loop over them (local_slots='loop'; lax.map, whose
  compiled step copies no more bytes than as many plain steps do, where a loop updating the
  stacked state in place copied the whole stack every slot) or one vmap ('vmap')."""
  if lay.per_slice == 1:
    return jax.tree.map(lambda x: x[None], fn(*_take(args, 0)))
  if lay.local_slots == "vmap":
    return jax.vmap(fn)(*args)
  return jax.lax.map(lambda a: fn(*a), args)


def local_step_on_slice(slots, lr, batch, lay: Layout):
  fn = functools.partial(one_source_step, lr=lr, lay=lay)
  params, opt, metrics = _over_local_slots(
      fn, lay, slots["params"], slots["opt"], batch["inputs"], batch["targets"],
      batch["source_ids"], batch["vocab_size"])
  return {"params": params, "opt": opt}, metrics


def local_step(state, batch, *, lay: Layout, mesh):
  """batch: inputs/targets [S, B, L], source_ids [S, B] (each row's source), vocab_size [S].

  Each source slice steps its own slots under shard_map; no collective over `source` can be
  written there (data-parallel gradients still reduce inside a slice). A source whose loss or
  gradient is not finite keeps its previous params and moments and counts the skip in its own
  `skipped` entry; the trainer decides whether to stop.
  """
  on_slices = _on_slices(functools.partial(local_step_on_slice, lay=lay), mesh,
                         in_specs=(PER_SLICE, SAME, PER_SLICE), out_specs=(PER_SLICE, PER_SLICE))
  lr = lay.schedule(state["step"])
  slots, metrics = on_slices(state["slots"], lr, batch)
  skipped = state["skipped"] + (~metrics["finite"]).astype(jnp.int32)
  state = dict(state, slots=slots, step=state["step"] + 1, skipped=skipped)
  return state, dict(metrics, lr=lr)


# ----------------------------------------------------------------------------- outer step


def outer_step_on_slice(slots, global_, outer_opt, bank, slot_sources_S, weights_S, lay: Layout):
  """The one place sources communicate: psum over `source` of each slice's weighted bodies (and
  the variant's table contributions), over the total weight: psum(w x) / sum(w). FedAvg assigns
  that mean; another outer optimizer steps along the pseudo-gradient global - mean."""
  mine, w_mine = _my_share(slot_sources_S, lay), _my_share(weights_S, lay)
  params = slots["params"]
  weighted_sum = lambda x: jnp.tensordot(w_mine.astype(x.dtype), x, axes=1)
  contribution = {"body": jax.tree.map(weighted_sum, params["body"])}
  table = lay.variant.table
  if table.in_global:
    contribution["embed"] = table.outer_contribution(params["embed"], mine, w_mine, lay)
  summed = jax.lax.psum(contribution, "source")  # <- every byte that crosses `source`
  total = weights_S.sum()  # = psum of each slice's weights: every slice holds all of them
  mean = {"body": jax.tree.map(lambda s: s / total.astype(s.dtype), summed["body"])}
  owned = None
  if table.in_global:
    mean["embed"], owned_G = table.outer_mean(global_["embed"], summed["embed"], slot_sources_S,
                                              weights_S, lay)
    owned = jax.tree.map(lambda _: owned_G[:, None], mean["embed"])
  pseudo_body = jax.tree.map(jnp.subtract, global_["body"], mean["body"])
  if lay.fedavg:  # the new global is the mean itself, bit for bit
    new_global = mean
  else:
    pseudo = {"body": pseudo_body}
    if owned is not None:  # rows no source owned this round get no pseudo-gradient
      pseudo["embed"] = jax.tree.map(lambda g, m, o: jnp.where(o, g - m, 0), global_["embed"],
                                     mean["embed"], owned)
    updates, outer_opt = lay.outer_tx.update(pseudo, outer_opt, global_)
    new_global = optax.apply_updates(global_, updates)
  if owned is not None:  # rows no participating source owns stay exactly as they were
    new_global["embed"] = jax.tree.map(lambda o, n, g: jnp.where(o, n, g), owned,
                                       new_global["embed"], global_["embed"])
  if lay.freeze_body:
    new_global["body"] = global_["body"]
  if lay.banked:  # back into this slice's own part of the bank: no traffic
    at = _bank_index(mine, lay)
    put = lambda b, s: b.at[at].set(s)
    bank = dict(bank, opt=jax.tree.map(put, bank["opt"], slots["opt"]))
    if "embed" in bank:
      bank["embed"] = jax.tree.map(put, bank["embed"], params["embed"])
  metrics = {"outer/pseudo_grad_norm": optax.tree.norm(pseudo_body)}
  return new_global, outer_opt, bank, metrics


def outer_step(state, slot_sources_S, weights_S, *, lay: Layout, mesh):
  on_slices = _on_slices(functools.partial(outer_step_on_slice, lay=lay), mesh,
                         in_specs=(PER_SLICE, SAME, SAME, PER_SLICE, SAME, SAME),
                         out_specs=(SAME, SAME, PER_SLICE, SAME))
  new_global, outer_opt, bank, metrics = on_slices(
      state["slots"], state["global"], state["outer_opt"], state.get("bank", {}), slot_sources_S,
      weights_S)
  state = dict(state, outer_opt=outer_opt)
  state["global"] = new_global
  if lay.banked:
    state["bank"] = bank
  return state, metrics


# ----------------------------------------------------------------------------- build


def build(config, mesh, vocab: Vocab, metric_sources: int | None = None) -> Program:
  """metric_sources: how many sources the per-source metrics count (STD's one slot sees them all)."""
  lay = make_layout(config, mesh, vocab, metric_sources)
  init = functools.partial(init_state, lay=lay)
  abstract = jax.eval_shape(init, jax.random.key(0))
  shardings = state_shardings(abstract, mesh, lay)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
  batch_sh = {"inputs": batch_sharding(mesh), "targets": batch_sharding(mesh),
              "source_ids": NamedSharding(mesh, P("source", ("data", "fsdp"))),
              "vocab_size": NamedSharding(mesh, PER_SLICE)}
  same = NamedSharding(mesh, SAME)
  bind = lambda fn: functools.partial(fn, lay=lay, mesh=mesh)
  return Program(
      init=jax.jit(init, out_shardings=shardings),
      begin_round=jax.jit(bind(begin_round), in_shardings=(shardings, same),
                          out_shardings=shardings, donate_argnums=0),
      local_step=jax.jit(bind(local_step), in_shardings=(shardings, batch_sh),
                         out_shardings=(shardings, None), donate_argnums=0),
      outer_step=jax.jit(bind(outer_step), in_shardings=(shardings, same, same),
                         out_shardings=(shardings, None), donate_argnums=0),
      state_shardings=shardings, abstract_state=abstract, batch_shardings=batch_sh,
      slots=lay.slots, uses_bank=lay.banked, layout=lay)


# ----------------------------------------------------------------------------- reading the state


def outer_payload_bytes(program_or_state) -> int:
  """Bytes one source sends in a round if it has its own slice: the body, plus the global table
  when the variant keeps one. Banks never cross `source` (round_sources keeps each source on the
  slice that holds its bank) and the local steps cannot; the HLO check measures the same."""
  state = getattr(program_or_state, "abstract_state", program_or_state)
  shared = state["global"]
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(shared))


def source_params(state, variant, vocab: Vocab, source: int, slot: int | None):
  """One source's (body, embed) as a complete model.

  slot=None: the global body with the table the variant gives the source (shared tables: its rows
  of the global table; private: its own table, from the bank or its slot). Otherwise the local
  model currently training in that slot.
  """
  rules = variants.get(variant)
  slots = state["slots"]["params"]
  if slot is not None:
    return _take(slots["body"], slot), _take(slots["embed"], slot)
  if rules.mixture:
    return _take(slots["body"], 0), _take(slots["embed"], 0)
  body = state["global"]["body"]
  if rules.table.in_global:
    table = state["global"]["embed"]
    l2g = vocab.local_to_global[source]
    # Padding ids point past the (padded) global table, so its rows there are zeros.
    return body, variants.rows_of(table, jnp.asarray(np.where(l2g < 0, table["table"].shape[0],
                                                              l2g)))
  if "bank" in state and "embed" in state["bank"]:
    return body, _take(state["bank"]["embed"], source)
  return body, _take(slots["embed"], source)


def make_batch_jnp(tokens):
  """As make_batch, inside jit: token windows [..., L+1] -> inputs/targets (-1 = padding)."""
  return {"inputs": jnp.maximum(tokens[..., :-1], 0), "targets": tokens[..., 1:]}


def make_batch(tokens_SxBxL1: np.ndarray, source_ids_SxB: np.ndarray, vocab_S: np.ndarray):
  """Host token windows [S, B, L+1] -> the step's batch dict (targets shifted by one)."""
  tokens = np.asarray(tokens_SxBxL1, np.int32)
  return {"inputs": np.maximum(tokens[..., :-1], 0), "targets": tokens[..., 1:],
          "source_ids": np.asarray(source_ids_SxB, np.int32),
          "vocab_size": np.asarray(vocab_S, np.int32)}
