"""A tensorflow-datasets source read without TensorFlow: a tiny array_record dataset built here."""
import os

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from dept_jax.config_lib import base_config  # noqa: E402
from dept_jax.data import build_data, documents, text  # noqa: E402
from dept_jax.data.base import DataError  # noqa: E402
from test_data_fixtures import make_docs  # noqa: E402

DOCS = make_docs("latin", 20, 400, seed=7)


class DeptTinyText(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    # DatasetInfo directly: dataset_info_from_configs looks for package metadata a test lacks.
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i, doc in enumerate(DOCS):
      yield i, {"text": doc}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("tfds"))
  DeptTinyText(data_dir=d, file_format="array_record").download_and_prepare()
  return d


def _read(name, spec, unit_examples=20_000):
  stats = documents.ReadStats()
  units = documents.plan(name, spec, unit_examples=unit_examples)
  return units, [d for u in units for d in documents.read_unit(u, stats)]


def test_tfds_source_reads_every_example_by_index_ranges(data_dir):
  spec = {"path": "dept_tiny_text", "format": "tfds", "data_dir": data_dir, "split": "train"}
  units, docs = _read("t", spec, unit_examples=6)
  assert [(u.parts[0].start, u.parts[0].stop) for u in units] == [(0, 6), (6, 12), (12, 18),
                                                                   (18, 20)]
  assert sorted(docs) == sorted(DOCS)


def test_tfds_source_trains_windows(data_dir, tmp_path):
  c = base_config()
  c.variant, c.batch_size, c.seq_len = "spec_opt", 4, 32
  text.add_text_data(c, {"t": text.source("dept_tiny_text", format="tfds", data_dir=data_dir)})
  c.data.update(source_vocab_size=300, cache_dir=str(tmp_path / "cache"), workers=1)
  b = build_data(c, str(tmp_path))
  rows = np.stack([b.sources[0].windows[i] for i in range(4)])
  assert rows.shape == (4, 33) and rows.max() < 300


def test_tfds_missing_field_and_missing_dataset(data_dir, tmp_path):
  with pytest.raises(DataError, match=r"source 't': tfds example 0 has no feature 'body' "
                     r"\(has: text\)\. Fix: set config.data.sources.t.field"):
    _read("t", {"path": "dept_tiny_text", "format": "tfds", "data_dir": data_dir,
                "field": "body"})
  with pytest.raises(DataError, match=r"source 'n': tensorflow-datasets could not open "
                     r"'dept_tiny_text'.*Fix: prepare the dataset as array_record"):
    documents.plan("n", {"path": "dept_tiny_text", "format": "tfds",
                         "data_dir": str(tmp_path / "empty")})
