"""Integer version folders under a model base path, as TF Serving reads them."""

import os
import re
from typing import List

SAVED_MODEL_FILE = "saved_model.pb"
_PLAIN_INTEGER = re.compile(r"0|[1-9][0-9]{0,17}")  # fits int64, as TF Serving's version numbers


def list_versions(base_path: str) -> List[int]:
    """Subfolders of `base_path` named by a plain integer ("7", not "07", "7.tmp" or "٧"),
    ascending; other names are ignored, never an error (as TF Serving)."""
    try:
        names = os.listdir(base_path)
    except (FileNotFoundError, NotADirectoryError):
        return []
    # ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
    return sorted(int(name) for name in names
                  if _PLAIN_INTEGER.fullmatch(name) and os.path.isdir(os.path.join(base_path, name)))


def resolve_saved_model_dir(path) -> str:
    """`path` itself if it holds a SavedModel, else its newest integer version folder that holds one
    (as TF Serving picks from a model base path). FileNotFoundError says what to pass instead."""
    path = str(path)
    if os.path.exists(os.path.join(path, SAVED_MODEL_FILE)):
        return path
    versions = [v for v in list_versions(path) if os.path.exists(os.path.join(path, str(v), SAVED_MODEL_FILE))]
    if not versions:
        raise FileNotFoundError(
            f"{path}: neither a SavedModel (no {SAVED_MODEL_FILE}) nor a model base path with integer "
            "version folders holding one; pass MODEL_BASE_PATH or MODEL_BASE_PATH/<version> as written by "
            "serving/export.py"
        )
    return os.path.join(path, str(versions[-1]))
