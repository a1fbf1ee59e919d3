"""OGBench `.npz` play data: reading, checking, writing byte-identically, and turning rows
into relabelled transitions.

File format (OGBench's own, read by `ogbench.utils.load_dataset`): one row per environment
step, episodes back to back; `observations` [N, obs_dim] float32, `actions` [N, A] float32,
`terminals` [N] bool (True on each episode's last row), `qpos` [N, nq] and `qvel` [N, nv]
float32 (the MuJoCo state of that row's observation), and `button_states` for scene. The
validation split is the file beside it ending in `-val.npz`.

A row t is a transition (s_t, a_t, s_{t+1}) unless it is its episode's last row: exactly the
transitions `load_dataset` keeps. Its `terminals` value is 1 when row t+1 ends the episode,
as `load_dataset` shifts it, and its rewards come from qpos_t (the state s).
"""

import functools
import io
import os
import zipfile

import numpy as np

from data import relabel, schema
from data.errors import DataError

REQUIRED_KEYS = ("observations", "actions", "terminals")
FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # zip entries carry a timestamp; fix it for identical bytes
# numpy dtype kinds a float32 feature can be made from: bool, signed, unsigned, float. Complex
# values would lose their imaginary part; text, bytes, objects and records are not numbers.
NUMERIC_KINDS = "biuf"


def val_path_for(train_path: str) -> str:
    """The validation file beside a training file, named as ogbench.make_env_and_datasets does."""
    return str(train_path).replace(".npz", "-val.npz")


def open_binary(path: str):
    """A readable, seekable binary file for a local path or any Beam filesystem URL."""
    if "://" in str(path):
        from apache_beam.io.filesystems import FileSystems

        return FileSystems.open(str(path), compression_type="uncompressed")
    return open(path, "rb")


def _exists(path: str) -> bool:
    if "://" in str(path):
        from apache_beam.io.filesystems import FileSystems

        return FileSystems.exists(str(path))
    return os.path.isfile(path)


def require_file(path: str, what: str) -> None:
    if not _exists(path):
        raise DataError(
            f"{path}: file not found ({what}). Generate play data with "
            f"`python pipeline/generate.py --env=cube-single --output=DIR` or point --input at "
            f"an existing OGBench file."
        )


def array_headers(path: str) -> dict:
    """key -> (shape, dtype) of every array in an .npz, reading headers only (no decompression)."""
    require_file(path, "OGBench .npz dataset")
    try:
        with open_binary(path) as handle, zipfile.ZipFile(handle) as archive:
            headers = {}
            for name in archive.namelist():
                if not name.endswith(".npy"):
                    continue
                with archive.open(name) as member:
                    version = np.lib.format.read_magic(member)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(member)
                headers[name[:-4]] = (tuple(shape), np.dtype(dtype))
            return headers
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise DataError(
            f"{path}: not a readable .npz file ({type(error).__name__}: {error}); the file is "
            f"truncated or corrupt: regenerate it with pipeline/generate.py."
        ) from None


def check_numeric(where: str, field: str, dtype) -> None:
    """DataError unless `dtype` holds real numbers (see NUMERIC_KINDS)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None:
        raise DataError(
            f"{where}: field {field!r} has dtype {dtype}, expected real numbers "
            f"(bool, int or float); the data is not in this format: regenerate or convert it."
        )


def check_layout(path: str, headers: dict, needed_keys) -> dict:
    """Checks keys, dtypes, ranks and lengths; returns {rows, obs_dim, action_dim, qpos_dim}.
    DataError if bad."""
    for key in needed_keys:
        if key not in headers:
            raise DataError(
                f"{path}: missing field {key!r} (found {sorted(headers)}); OGBench single-task "
                f"data needs {list(needed_keys)}: regenerate the file with pipeline/generate.py."
            )
    expected_rank = {"observations": 2, "actions": 2, "terminals": 1, "qpos": 2, "qvel": 2, "button_states": 2}
    for key in needed_keys:
        check_numeric(path, key, headers[key][1])  # from the header: np.load never unpickles anything
        shape = headers[key][0]
        if key in expected_rank and len(shape) != expected_rank[key]:
            raise DataError(
                f"{path}: field {key!r} has shape {shape}, expected {expected_rank[key]} dimensions "
                f"(rows first); the file is not in OGBench's format."
            )
    rows = headers["observations"][0][0]
    for key in needed_keys:
        if headers[key][0][0] != rows:
            raise DataError(
                f"{path}: field {key!r} has {headers[key][0][0]} rows but 'observations' has "
                f"{rows}; every field needs one row per step: the file is inconsistent, "
                f"regenerate it."
            )
    if rows < 2:
        raise DataError(f"{path}: field 'observations' has {rows} rows; a dataset needs at least one transition.")
    return {"rows": int(rows), "obs_dim": int(headers["observations"][0][1]),
            "action_dim": int(headers["actions"][0][1]),
            "qpos_dim": int(headers["qpos"][0][1]) if "qpos" in headers and len(headers["qpos"][0]) == 2 else None}


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, keys: tuple, stamp) -> dict:
    del stamp  # part of the cache key only: a rewritten file is read again
    try:
        with open_binary(path) as handle:
            data = np.load(handle, allow_pickle=False)
            return {key: np.asarray(data[key]) for key in keys}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as error:
        raise DataError(
            f"{path}: cannot read fields {list(keys)} ({type(error).__name__}: {error}); the file "
            f"is truncated or corrupt: regenerate it with pipeline/generate.py."
        ) from None


def load_arrays(path: str, keys) -> dict:
    """The named arrays of an .npz, cached per process (Beam workers read a file once)."""
    stamp = None
    if "://" not in str(path):
        stat = os.stat(path)
        stamp = (stat.st_size, stat.st_mtime_ns)
    return _load_cached(str(path), tuple(keys), stamp)


def _shown(value) -> str:
    """A numpy scalar as a user reads it, at its own precision: 'nan', '1.01', 'True'."""
    return str(np.asarray(value)[()])


def check_terminals(path: str, terminals: np.ndarray) -> None:
    """Terminals must be 0/1 and the file must end on an episode's last row."""
    values = np.asarray(terminals)
    bad = np.flatnonzero((values != 0) & (values != 1))
    if len(bad):
        raise DataError(
            f"{path}: field 'terminals' row {bad[0]} is {_shown(values[bad[0]])}, expected 0/1 (True on "
            f"each episode's last row); the file is not in OGBench's format."
        )
    if not values[-1]:
        raise DataError(
            f"{path}: field 'terminals' is 0 on the last row {len(values) - 1}: the file ends in "
            f"the middle of an episode (truncated?); regenerate it."
        )


def check_finite(path: str, field: str, values: np.ndarray, row_offset: int) -> None:
    finite = np.isfinite(values)
    if not finite.all():
        row, *column = np.argwhere(~finite)[0]
        where = f" column {column[0]}" if column else ""
        raise DataError(
            f"{path}: field {field!r} row {row + row_offset}{where} is {_shown(values[(row, *column)])}; "
            f"datasets must be finite: regenerate the file or drop that episode."
        )


def check_actions(path: str, actions: np.ndarray, row_offset: int) -> None:
    limit = 1.0 + schema.ACTION_TOLERANCE
    outside = np.abs(actions) > limit
    if outside.any():
        row, column = np.argwhere(outside)[0]
        raise DataError(
            f"{path}: field 'actions' row {row + row_offset} column {column} is "
            f"{_shown(actions[row, column])}, outside [-1, 1] by more than the tolerance "
            f"{schema.ACTION_TOLERANCE}; OGBench actions are normalised to [-1, 1]: rescale them "
            f"or fix the generator."
        )


def transitions(path: str, kind: str, targets: dict, start: int, stop: int) -> tuple[dict, int]:
    """Relabelled transitions of rows [start, stop) of an OGBench file.

    Args:
      path: the .npz file.
      kind: reward kind of the env family ('cube', 'scene', 'maze', 'soccer').
      targets: reward key -> that task's goal (data.envs.task_targets).
      start, stop: row range; the rows must have been checked by `check_layout`.

    Returns:
      (columns, episodes): columns maps feature name (data.schema) -> float32 [n] or [n, dim]
      for the n transitions whose first row lies in the range; episodes counts the episodes
      that end in the range.
    """
    keys = list(REQUIRED_KEYS) + ["qpos"] + (["button_states"] if kind == "scene" else [])
    arrays = load_arrays(path, keys)
    # Row stop (if inside the file) is the next state of the range's last transition.
    observations = arrays["observations"]
    actions = arrays["actions"][start:stop]
    terminals = arrays["terminals"]
    check_finite(path, "observations", observations[start:stop], start)
    check_finite(path, "actions", actions, start)
    check_finite(path, "qpos", arrays["qpos"][start:stop], start)
    check_actions(path, actions, start)

    is_episode_end = terminals[start:stop].astype(bool)
    rows = start + np.flatnonzero(~is_episode_end)
    columns = {
        schema.OBSERVATIONS: observations[rows].astype(np.float32),
        schema.ACTIONS: np.clip(arrays["actions"][rows], -schema.ACTION_CLIP, schema.ACTION_CLIP).astype(np.float32),
        schema.NEXT_OBSERVATIONS: observations[rows + 1].astype(np.float32),
        schema.TERMINALS: terminals[rows + 1].astype(np.float32),
    }
    qpos = arrays["qpos"][rows]
    button_states = arrays["button_states"][rows] if kind == "scene" else None
    for key, task_targets in targets.items():
        rewards, masks = relabel.task_rewards(kind, task_targets, qpos, button_states)
        columns[schema.reward_feature(key)] = rewards
        columns[schema.mask_feature(key)] = masks
    return columns, int(is_episode_end.sum())


def npz_bytes(arrays: dict, compress: bool = True) -> bytes:
    """The .npz file for `arrays` (key order kept); the same arrays always give the same bytes.

    np.savez stamps every zip entry with the current time; this writes the same .npy members
    with a fixed timestamp instead. np.load and ogbench.utils.load_dataset read it as usual.
    """
    buffer = io.BytesIO()
    compression = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, mode="w", compression=compression, allowZip64=True) as archive:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=FIXED_ZIP_TIME)
            info.compress_type = compression
            info.external_attr = 0o644 << 16
            with archive.open(info, mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(value), allow_pickle=False)
    return buffer.getvalue()
