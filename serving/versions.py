"""Integer version folders under a model base path, as TF Serving reads them."""

import os
from typing import List

SAVED_MODEL_FILE = "saved_model.pb"


def list_versions(base_path: str) -> List[int]:
    """Integer-named subfolders of `base_path`, ascending; other names are ignored (as TF Serving)."""
    try:
        names = os.listdir(base_path)
    except FileNotFoundError:
        return []
    return sorted(int(name) for name in names
                  if name.isdigit() and os.path.isdir(os.path.join(base_path, name)))


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
