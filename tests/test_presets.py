"""The paper presets are checked abstractly: their state is built with eval_shape on a mesh of the
size they are meant for, and their local and outer steps are traced and lowered, never run."""
import importlib.util
import os

import jax
import numpy as np
import pytest

from dept_jax import config_lib, dept, experiment, model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name, arg=None):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", name + ".py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg) if arg else mod.get_config()


def abstract_program(config):
  K = config.data.num_sources
  mesh = jax.sharding.AbstractMesh((K, 1, 1, 1), config_lib.MESH_AXES)
  return dept.build(config, mesh, experiment.abstract_vocab(config))


# (preset, variant, body params in millions, sources, table rows per source: 50,257 ids padded
# to a multiple of model.vocab_multiple = 128)
PRESETS = [
    ("pile_125m", "spec", 84.95, 16, 50304),  # 12 x (4*768^2 + 3*768*2048 + 2*768) + 768
    ("pile_350m", "glob", 308.33, 16, 50304),
    ("mc4_1b_spec_opt", None, 1214.35, 8, 50304),
]


@pytest.mark.parametrize("name, variant, body_m, sources, rows", PRESETS)
def test_preset_builds_abstractly(name, variant, body_m, sources, rows):
  c = load(name, variant)
  assert c.steps % c.local_steps == 0 and c.steps // c.local_steps >= 10
  prog = abstract_program(c)
  state = prog.abstract_state
  body = model.count_params(state["global"]["body"])
  assert round(body / 1e6, 2) == body_m, body
  table = state["slots"]["params"]["embed"]["table"]
  assert table.shape == (sources, rows, c.model.d_model)
  assert experiment.abstract_vocab(c).rows == 50257  # the tokenizer's size is not the table's
  assert table.sharding.spec[0] == "source"
  batch = experiment.abstract_batch(c, prog)
  traced = prog.local_step.trace(state, batch)
  out_state = traced.out_info[0]
  assert jax.tree.structure(out_state) == jax.tree.structure(state)
  vec = lambda dt: jax.ShapeDtypeStruct((prog.slots,), dt)
  outer = prog.outer_step.trace(state, vec(np.int32), vec(np.float32))
  assert outer.out_info[0]["global"]["body"]["final_norm"].shape == (c.model.d_model,)


def test_spec_opt_preset_matches_the_papers_embedding_memory():
  """1.3B SPEC-OPT: 8 private 50,257-row tables vs one mT5-sized (250,112) table."""
  c = load("mc4_1b_spec_opt")
  per_source = 50257 * c.model.d_model
  assert round(per_source / 1e6, 1) == 102.9
  assert round(250112 * c.model.d_model / 1e6, 1) == 512.2


@pytest.mark.parametrize("name", ["pile_125m", "pile_350m", "mc4_1b_spec_opt"])
def test_std_baselines_sit_beside_every_preset(name):
  """The paper's STD baselines: the same model and schedule, the mixture sampled at tau 0 / 1."""
  dept_preset = load(name)
  for arg, tau in (("std_tau0", 0.0), ("std_tau1", 1.0)):
    c = load(name, arg)
    assert c.variant == "std" and c.data.temperature == tau
    assert c.model == dept_preset.model and (c.steps, c.batch_size, c.seq_len) == (
        dept_preset.steps, dept_preset.batch_size, dept_preset.seq_len)
