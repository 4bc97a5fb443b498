from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def untrained_cache(tmp_path_factory):
    """A cache folder shared by the examples, so the untrained fallback checkpoint is built once."""
    return tmp_path_factory.mktemp("ettin-cache")
