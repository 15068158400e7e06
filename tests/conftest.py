import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

# Two logical CPU devices for the mirrored-strategy tests. This must happen before
# TensorFlow initialises, so here, before any test module runs; single-device code keeps
# running on /CPU:0 exactly as before.
from fastcifar.distribute import split_cpu  # noqa: E402

split_cpu(2)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's real data cache."""
    monkeypatch.setenv("FASTCIFAR_DATA", str(tmp_path_factory.mktemp("cache")))
