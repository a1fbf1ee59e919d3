"""Bazel's py_test entry point: runs pytest on the test files given as arguments.

Each `py_test` in BUILD names one test file; pytest then does what it does outside Bazel (fixtures,
parametrisation), so `bazel test //...` and `pytest` run the same assertions. The packages are on
the path through the libraries' `imports` in BUILD.
"""
import os
import sys

import pytest

if __name__ == "__main__":
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "--rootdir", root, *sys.argv[1:]]))
