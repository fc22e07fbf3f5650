import atexit
import os
import shutil
import sys
import tempfile

import jax
import pytest

# The tests import helpers from this folder (tests/_models.py).
sys.path.insert(0, os.path.dirname(__file__))

# Many tests compile the same programs (the same model, method and shapes in
# another test); a compilation cache for this run compiles each once. It
# holds XLA's executables themselves, so what runs is what a fresh
# compilation gives.
_CACHE = tempfile.mkdtemp(prefix="gradreg-optax-tests-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# The SAM family beyond SAM itself is tested in full by its own files
# (test_sam_family.py, test_registry.py, test_method.py); the tests that run
# every method through every pattern run them under `-m slow`, which keeps
# the default run within its time.
SAM_FAMILY = ("gsam", "wsam", "friendly_sam", "vasso", "fisher_sam")
OWN_FILES = ("test_sam_family.py", "test_registry.py", "test_method.py")


def pytest_collection_modifyitems(items):
  for item in items:
    params = getattr(getattr(item, "callspec", None), "params", {})
    if (os.path.basename(str(item.fspath)) not in OWN_FILES
        and any(isinstance(v, str) and v in SAM_FAMILY
                for v in params.values())):
      item.add_marker(pytest.mark.slow)
