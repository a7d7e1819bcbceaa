"""Every DEPT variant's rules, in one table. The rest of the code asks `get(name)` for a rule
instead of testing variant names, so a new variant is one entry here (plus its tests).

A variant is:
  vocabulary  which ids a source's data is in (the data layer asks this):
                "global"   one global tokenizer, every source in global ids
                "trimmed"  the global tokenizer, each source's ids trimmed to those it uses
                "own"      every source trains its own tokenizer
  mixture     True: one model trained on the temperature-sampled mixture of all sources, no rounds
              (the STD baseline); False: one slot per source taking part, rounds, outer steps
  table       a TableRule: where each source's embedding table lives, what it starts a round as,
              and what the outer step does with it (SHARED_ROWS or PRIVATE below)
  eval_model  "mixture": the one model, scored on every source's held-out text in global ids;
              "source": each source's own complete model (`dept.source_params`) on its own ids
              (a trimmed vocabulary scores unowned targets as <unk>; eval reports their rate)
  export      how a source's model leaves as a Hugging Face folder (export_run.source_model):
                "global"  its table over the global vocabulary, with the global tokenizer
                "owned"   its table over the pieces it owns, with the global tokenizer restricted
                          to them (ids it never trained on exist for no consumer)
                "own"     its own table and its own tokenizer

A table rule's round_start and outer functions run on one `source` slice inside dept's
shard_map, and none of them communicates: the outer step sums what `outer_contribution` returns
over `source` (its one psum) and hands the sum to `outer_mean`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from dept_jax import model


class TableRule(NamedTuple):
  """Where a source's embedding table lives and what a round does with it.

  in_global: the table is one global table in state['global'] (sent at the outer step); otherwise
    each source owns a table that never leaves its slice (kept in the bank while it sits out).
  init(cfg, key, lay) -> (global table or None, [n_sources] stacked private tables or None)
  round_start(global_table, kept_SxT, sources_S, lay) -> the tables slots start the round with
    (kept_SxT: the slots' own tables, from the bank or kept in the slots; None for global tables)
  outer_contribution(local_SxT, sources_S, weights_S, lay) -> this slice's share of the sum
  outer_mean(global_table, summed, all_sources, all_weights, lay) -> (mean table, owned rows [G])
  """
  name: str
  in_global: bool
  init: Callable
  round_start: Callable
  outer_contribution: Callable | None = None
  outer_mean: Callable | None = None


def rows_of(global_table, l2g_T):
  """A source's rows of the global table in its local id order; padding ids (== rows of the global
  table) are out of range, so take() fills zeros (a negative index would wrap around)."""
  return jax.tree.map(lambda t: jnp.take(t, l2g_T, axis=0, mode="fill", fill_value=0), global_table)


def _shared_init(cfg, key, lay):
  return model.init_embed(cfg, lay.global_rows, key), None


def _shared_round_start(global_table, kept, sources_S, lay):
  del kept
  return jax.vmap(lambda k: rows_of(global_table, lay.local_to_global[k]))(sources_S)


def _shared_contribution(local_SxT, sources_S, weights_S, lay):
  """Each slot's weighted rows scattered onto the global rows its source owns."""
  def one(table_SxRxD):
    G = lay.global_rows
    ids_SxR = lay.local_to_global[sources_S]
    weighted = weights_S[:, None, None].astype(table_SxRxD.dtype) * table_SxRxD
    return jnp.zeros((G,) + table_SxRxD.shape[2:], table_SxRxD.dtype).at[ids_SxR].add(
        weighted, mode="drop")
  return jax.tree.map(one, local_SxT)


def _shared_mean(global_table, summed, all_sources, all_weights, lay):
  """Each global row's weighted mean over the sources that own it (rows a source lacks do not
  count as zeros); rows nobody owns this round are marked unowned and stay as they were."""
  ids = lay.local_to_global[all_sources]
  w_rows = jnp.broadcast_to(all_weights[:, None], ids.shape)
  owners_G = jnp.zeros((lay.global_rows,), jnp.float32).at[ids].add(w_rows, mode="drop")
  owned_G = owners_G > 0
  mean = jax.tree.map(
      lambda s: s / jnp.where(owned_G, owners_G, 1.0)[:, None].astype(s.dtype), summed)
  return mean, owned_G


def _private_init(cfg, key, lay):
  keys = jax.random.split(key, lay.sources)
  return None, jax.vmap(lambda k: model.init_embed(cfg, lay.rows, k))(keys)


def _private_round_start(global_table, kept_SxT, sources_S, lay):
  del global_table, sources_S
  return kept_SxT


# The rows of one global table: each source trains its own rows (all of them for a global
# vocabulary), and the outer step averages every row over the sources that own it.
SHARED_ROWS = TableRule("shared_rows", in_global=True, init=_shared_init,
                        round_start=_shared_round_start, outer_contribution=_shared_contribution,
                        outer_mean=_shared_mean)
# A table of the source's own: randomly initialised, trained only on its slice, never sent.
PRIVATE = TableRule("private", in_global=False, init=_private_init,
                    round_start=_private_round_start)


@dataclasses.dataclass(frozen=True)
class Variant:
  name: str
  vocabulary: str
  table: TableRule
  export: str
  mixture: bool = False

  @property
  def eval_model(self) -> str:
    return "mixture" if self.mixture else "source"

  @property
  def trimmed(self) -> bool:
    """Sources see a trimmed global vocabulary: local ids map to global ones (export, sampling)."""
    return self.vocabulary == "trimmed"


VARIANTS: dict[str, Variant] = {
    v.name: v for v in (
        Variant("std", vocabulary="global", table=PRIVATE, export="global", mixture=True),
        Variant("glob", vocabulary="global", table=SHARED_ROWS, export="global"),
        Variant("trim", vocabulary="trimmed", table=SHARED_ROWS, export="owned"),
        Variant("spec", vocabulary="trimmed", table=PRIVATE, export="owned"),
        Variant("spec_opt", vocabulary="own", table=PRIVATE, export="own"),
    )
}


def get(variant: Any) -> Variant:
  """The rules of a variant, by name (a Variant passes through)."""
  if isinstance(variant, Variant):
    return variant
  return VARIANTS[variant]
