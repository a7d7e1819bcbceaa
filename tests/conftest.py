"""Eight fake CPU devices, so real meshes (source x data) are exercised in every test."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Token caches, trained tokenizers, the built-in corpus and compiled programs (in-process and in
# the CLI runs tests start) go to folders of this test session's, so tests neither read nor fill
# the user's ~/.cache/dept_jax (JAX writes a cache entry in place: a test that caps file sizes
# would leave truncated ones there).
if "DEPT_JAX_CACHE" not in os.environ:
  import tempfile
  os.environ["DEPT_JAX_CACHE"] = tempfile.mkdtemp(prefix="dept_jax_test_cache_")
os.environ.setdefault("DEPT_JAX_COMPILATION_CACHE",
                      os.path.join(os.environ["DEPT_JAX_CACHE"], "xla"))

import jax  # noqa: E402  (must come after XLA_FLAGS)

jax.config.update("jax_compilation_cache_dir", os.environ["DEPT_JAX_COMPILATION_CACHE"])
