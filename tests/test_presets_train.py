"""Every config in configs/ prepares its data and trains a few steps on a small folder of real text
(the machine's own: Python's help topics, stdlib source, licences, C headers), its shapes shrunk by
overrides, so no preset can break silently."""
import importlib.util
import json
import os

import pytest

from dept_jax import train
from dept_jax.data import corpus
from test_data_fixtures import write_hf_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL = ("prose", "python", "licences", "c_headers")


def load(name, arg=None):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", name + ".py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg) if arg is not None else mod.get_config()


def real_text_tree(root: str, n_sources: int, docs_each: int = 6) -> str:
  """root/src<k>/ with a few real documents each, cycling over the built-in sources."""
  texts = {n: [json.loads(line)["text"] for line in
               open(corpus.ensure(n, os.path.join(root, ".corpus"), cap_bytes=400_000))]
           for n in REAL}
  for k in range(n_sources):
    pool = texts[REAL[k % len(REAL)]]
    os.makedirs(os.path.join(root, f"src{k:02d}"), exist_ok=True)
    for j in range(docs_each):
      doc = pool[(k // len(REAL) * docs_each + j) % len(pool)][:12_000]
      with open(os.path.join(root, f"src{k:02d}", f"d{j}.txt"), "w") as f:
        f.write(doc)
  return root


def shrink(c, steps=2):
  c.steps, c.local_steps, c.batch_size, c.seq_len = steps, 1, 4, 32
  c.model.update(d_model=32, n_layers=1, n_heads=2, n_kv_heads=0, d_ff=64, dtype="float32")
  c.optim.warmup_steps = 1
  c.data.update(vocab_size=400, source_vocab_size=400, tokenizer_train_bytes=100_000,
                eval_batches=1, val_fraction=0.2)
  c.log.update(every=1, progress=False, tensorboard=False)
  c.checkpoint.update(async_save=False, every=0)
  return c


def check_trained(wd, c):
  rows = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
  assert rows[-1]["step"] == c.steps
  names = list(c.data.sources) if c.data.kind == "text" else []
  for n in names:
    assert any(f"eval/{n}/bits_per_byte" in r for r in rows), n


@pytest.fixture(scope="module")
def tree16(tmp_path_factory):
  return real_text_tree(str(tmp_path_factory.mktemp("real16")), 16)


@pytest.mark.parametrize("name, variant", [("pile_125m", "spec"), ("pile_350m", "glob"),
                                           ("mc4_1b_spec_opt", "spec_opt")])
def test_paper_preset_prepares_and_trains_on_real_text(name, variant, tree16, tmp_path):
  n = 8 if name.startswith("mc4") else 16
  root = tree16
  if n == 8:
    root = real_text_tree(str(tmp_path / "real8"), 8)
  arg = f"{variant},{root}"
  if name == "pile_125m":  # the paper's kind of tokenizer: a Hugging Face BPE tokenizer.json
    texts = [open(os.path.join(root, "src00", f)).read() for f in os.listdir(f"{root}/src00")]
    arg += "," + write_hf_tokenizer(str(tmp_path / "tokenizer.json"), texts, 400)
  c = shrink(load(name, arg))
  assert c.data.num_sources == n and c.variant == variant
  wd = str(tmp_path / "wd")
  train.train(c, wd)
  check_trained(wd, c)


def test_demo_and_folders_presets_train_on_real_text(tmp_path):
  for name, arg in (("demo", ""), ("folders", real_text_tree(str(tmp_path / "r"), 4))):
    c = load(name, arg)
    vocab = c.data.source_vocab_size, c.data.tokenizer_train_bytes
    c = shrink(c)
    if name == "demo":  # its own tokenizers: Japanese needs its 1,024 pieces
      c.data.source_vocab_size, c.data.tokenizer_train_bytes = vocab
    wd = str(tmp_path / f"wd_{name}")
    train.train(c, wd)
    check_trained(wd, c)


def test_tiny_continue_and_spec_global_presets(tmp_path):
  c = load("tiny", "spec")
  c.steps, c.local_steps = 4, 2
  c.log.update(progress=False, tensorboard=False)
  train.train(c, str(tmp_path / "tiny"))
  parent = shrink(load("folders", real_text_tree(str(tmp_path / "r"), 2)), steps=2)
  parent.variant = "spec"
  train.train(parent, str(tmp_path / "parent"))
  new_dir = real_text_tree(str(tmp_path / "new"), 2)
  for name, arg in (("continue", f"{tmp_path / 'parent'},{new_dir}"),
                    ("spec_global", str(tmp_path / "parent"))):
    c = shrink(load(name, arg))
    wd = str(tmp_path / f"wd_{name}")
    train.train(c, wd)
    check_trained(wd, c)
