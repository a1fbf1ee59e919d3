"""Fixtures of the data tests.

    minari_root  an empty Minari datasets root for the test, set as MINARI_DATASETS_PATH.
"""

import pytest


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root
