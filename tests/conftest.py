"""Test-wide settings: 8 fake CPU devices (set before JAX is first imported) and float32; and the
fixtures several test files share."""

import getpass
import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One persistent compilation cache for the whole suite: every xdist worker and every train.py,
# evaluate.py and study.py subprocess (they inherit this environment). Many tests launch the same
# runlocal recipe, and each launch would otherwise compile all its programs again; with no
# minimum compile time the many small ones are kept too. Tests that check the cache itself, or
# need one of their own, set their own folder.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"mir_jax_tests_{getpass.getuser()}", "jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import pytest  # noqa: E402 -- after the environment: pytest plugins may import JAX


@pytest.fixture(scope="session")
def stage1(tmp_path_factory) -> str:
    """A connector-only training run (towers and LLM are a frozen item) of 4 steps of the tiny
    test model, checkpoints at steps 2 and 4: its WORKDIR (a str, basename "run"). Shared by the
    loading and init_from tests; a test may add files beside its checkpoints, never change them."""
    from mir_jax.train.loop import train_and_evaluate
    from tests import train_fixtures as fx

    workdir = str(tmp_path_factory.mktemp("stage1") / "run")
    c = fx.tiny_train_config(total_steps=4)
    c.checkpoint.every = 2
    c.trainable.llm = "none"
    train_and_evaluate(c, workdir)
    return workdir
