"""The trainer on real text: configs/folders.py over a folder tree made here, a few steps."""
import json
import math
import os

import importlib.util

from test_data_fixtures import write_tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_folders_config_trains_and_logs_bits_per_byte_per_source(tmp_path):
  tree = write_tree(str(tmp_path / "data"), kinds=("code", "cyrillic", "greek", "latin"),
                    n_docs=8, words=1200)
  spec = importlib.util.spec_from_file_location("folders_cfg", os.path.join(ROOT, "configs",
                                                                             "folders.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(tree)
  c.steps, c.local_steps, c.batch_size, c.seq_len = 4, 2, 4, 32
  c.model.d_model, c.model.n_layers, c.model.d_ff, c.model.n_heads = 32, 1, 64, 2
  c.data.source_vocab_size, c.data.eval_batches = 300, 1
  c.log.every, c.log.progress, c.log.tensorboard = 2, False, False
  from dept_jax import train
  wd = str(tmp_path / "wd")
  train.train(c, wd)
  rows = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
  last = [r for r in rows if "eval/latin/bits_per_byte" in r][-1]
  for name in ("code", "cyrillic", "greek", "latin"):
    assert math.isfinite(last[f"eval/{name}/bits_per_byte"]) and last[f"eval/{name}/loss"] > 0
  assert sorted(os.listdir(os.path.join(wd, "tokenizers"))) == [
      "code.model", "cyrillic.model", "greek.model", "latin.model"]
