"""Eight fake CPU devices, so real meshes (source x data) are exercised in every test."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Token caches, trained tokenizers and the built-in corpus go to a folder of this test session's,
# so tests neither read nor fill the user's ~/.cache/dept_jax.
if "DEPT_JAX_CACHE" not in os.environ:
  import tempfile
  os.environ["DEPT_JAX_CACHE"] = tempfile.mkdtemp(prefix="dept_jax_test_cache_")

import jax  # noqa: E402  (must come after XLA_FLAGS)

jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/dept_jax/jax_cache"))
