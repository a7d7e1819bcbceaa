"""The built-in corpus: made from what the machine holds, deterministically, absent parts skipped."""
import json
import os

from dept_jax.data import corpus


def test_builtin_sources_are_deterministic_and_distinct(tmp_path):
  paths = {}
  for name in ("prose", "python"):
    a = corpus.ensure(name, str(tmp_path / "a"), cap_bytes=150_000)
    b = corpus.ensure(name, str(tmp_path / "b"), cap_bytes=150_000)
    assert open(a, "rb").read() == open(b, "rb").read()
    docs = [json.loads(line)["text"] for line in open(a, encoding="utf-8")]
    assert len(docs) >= 2 and sum(map(len, docs)) >= 150_000 * 0.5
    assert len(set(docs)) == len(docs)  # duplicates dropped
    paths[name] = docs
  assert any("def " in d for d in paths["python"])
  assert not any(d.lstrip().startswith(("import ", "def ")) for d in paths["prose"][:20])


def test_absent_sources_are_skipped_with_a_reason():
  assert corpus.why_absent("python") is None
  assert "has no message catalogues" in corpus.why_absent("msg_xx")
  assert "unknown built-in source" in corpus.why_absent("nonsense")
  assert corpus.available(["python", "msg_xx", "prose"]) == ["python", "prose"]


def test_cache_is_reused(tmp_path):
  p = corpus.ensure("prose", str(tmp_path), cap_bytes=50_000)
  before = os.path.getmtime(p)
  assert corpus.ensure("prose", str(tmp_path), cap_bytes=50_000) == p
  assert os.path.getmtime(p) == before
