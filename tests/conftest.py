import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's real data cache."""
    monkeypatch.setenv("FASTCIFAR_DATA", str(tmp_path_factory.mktemp("cache")))
