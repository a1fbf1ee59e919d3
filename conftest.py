"""Pytest root: quiets TensorFlow's start-up noise (the packages are imported as installed by requirements.txt)."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PIP_EXTRA_INDEX_URL", " ")
