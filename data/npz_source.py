"""D4RL-style .npz files as a transition source ('npz:PATH.npz').

Layout: one row per step, episodes concatenated, every field with the same number of rows N:
`observations` [N, obs_dim], `actions` [N, A], `rewards` [N], `terminals` [N] (1 = true
termination), optional `timeouts` [N] (1 = time-limit truncation) and `next_observations`
[N, obs_dim]. Arrays are read with allow_pickle=False.

An episode ends at a row with terminals or timeouts set; rows after the last such row form a
final episode cut by the end of the file (treated like a timeout). Row t becomes the transition
(observations[t], actions[t], s') with rewards/default = rewards[t] and masks/default =
1 - terminals[t] (a timeout bootstraps), where s' is

- next_observations[t] when the file has them (every row is a transition);
- otherwise observations[t + 1] inside the episode. An episode's last row has no recorded s':
  after a timeout (or the end of the file) it is DROPPED, not given a fake next state; after a
  termination it is kept (mask 0, so s' is never bootstrapped) with s' = observations[t], the
  terminal row's own state, as a placeholder.

`terminals` (the feature) is 1 on each episode's last kept transition. Episode returns
(metadata `dataset_returns`) sum every recorded reward, dropped rows included. The validation
split is NAME-val.npz beside the file when it exists (no split is made up otherwise).
"""

import functools
import os

import numpy as np

from data import action_bounds, ogbench_source, schema
from data.errors import DataError

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals")
OPTIONAL_KEYS = ("timeouts", "next_observations")
_RANKS = {"observations": 2, "actions": 2, "rewards": 1, "terminals": 1, "timeouts": 1, "next_observations": 2}


def require_file(path: str, what: str) -> None:
    if not ogbench_source._exists(path):
        raise DataError(f"{path}: file not found ({what}); write a D4RL-style .npz with fields "
                        f"{list(REQUIRED_KEYS)} (+ optional {list(OPTIONAL_KEYS)}), e.g. with "
                        f"`python -m data.gym_recording --format=npz`.")


def check_layout(path: str) -> dict:
    """Checks fields, dtypes, ranks and lengths from the headers; returns {rows, obs_dim,
    action_dim, keys}. DataError naming the file and field otherwise."""
    headers = ogbench_source.array_headers(path)
    for key in REQUIRED_KEYS:
        if key not in headers:
            raise DataError(f"{path}: missing field {key!r} (found {sorted(headers)}); a D4RL-style file needs "
                            f"{list(REQUIRED_KEYS)} (+ optional {list(OPTIONAL_KEYS)}).")
    keys = [key for key in REQUIRED_KEYS + OPTIONAL_KEYS if key in headers]
    rows = headers["observations"][0][0] if headers["observations"][0] else 0
    for key in keys:
        shape, dtype = headers[key]
        ogbench_source.check_numeric(path, key, dtype)  # from the header: nothing is unpickled
        if len(shape) != _RANKS[key]:
            raise DataError(f"{path}: field {key!r} has shape {list(shape)}, expected {_RANKS[key]} dimensions "
                            f"(rows first; flatten image or dict observations into one vector).")
        if shape[0] != rows:
            raise DataError(f"{path}: field {key!r} has {shape[0]} rows but 'observations' has {rows}; every "
                            f"field needs one row per step.")
    obs_dim = headers["observations"][0][1]
    if "next_observations" in headers and headers["next_observations"][0][1] != obs_dim:
        raise DataError(f"{path}: field 'next_observations' has {headers['next_observations'][0][1]} columns but "
                        f"'observations' has {obs_dim}.")
    if rows < 1:
        raise DataError(f"{path}: field 'observations' has 0 rows; the file holds no steps.")
    return {"rows": int(rows), "obs_dim": int(obs_dim), "action_dim": int(headers["actions"][0][1]),
            "keys": tuple(keys)}


def _flags(path: str, field: str, values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    bad = np.flatnonzero((values != 0) & (values != 1))
    if len(bad):
        raise DataError(f"{path}: field {field!r} row {bad[0]} is {ogbench_source._shown(values[bad[0]])}, "
                        f"expected 0/1 (1 where the episode ends).")
    return values.astype(bool)


@functools.lru_cache(maxsize=4)
def _episodes_cached(path: str, keys: tuple, stamp) -> tuple:
    del stamp
    arrays = ogbench_source.load_arrays(path, [key for key in ("terminals", "timeouts") if key in keys])
    terminals = _flags(path, "terminals", arrays["terminals"])
    timeouts = _flags(path, "timeouts", arrays["timeouts"]) if "timeouts" in arrays else np.zeros_like(terminals)
    ends = terminals | timeouts
    ends[-1] = True  # the file's end cuts the last episode
    stops = np.flatnonzero(ends) + 1
    starts = np.concatenate([[0], stops[:-1]])
    return terminals, starts, stops


def episodes(path: str, keys: tuple) -> tuple:
    """(terminals [N] bool, episode starts, episode stops) of the file, cached per process."""
    stamp = None
    if "://" not in str(path):
        stat = os.stat(path)
        stamp = (stat.st_size, stat.st_mtime_ns)
    return _episodes_cached(str(path), tuple(keys), stamp)


def count_transitions(path: str, keys: tuple) -> tuple:
    """(episodes, transitions) the file converts to (see the module docstring)."""
    terminals, starts, stops = episodes(path, keys)
    if "next_observations" in keys:
        return len(starts), int(stops[-1])
    dropped = int(np.count_nonzero(~terminals[stops - 1]))  # one per episode not ended by a termination
    return len(starts), int(stops[-1]) - dropped


def transitions(path: str, keys: tuple, start: int, stop: int, bounds: dict | None) -> tuple:
    """(columns, episodes, episode returns) of episodes [start, stop) of the file."""
    terminals, starts, stops = episodes(path, keys)
    first, last = int(starts[start]), int(stops[stop - 1])
    arrays = ogbench_source.load_arrays(path, keys)
    rows = {key: np.asarray(arrays[key][first:last]) for key in keys}
    for key in ("observations", "actions", "rewards") + (("next_observations",) if "next_observations" in keys else ()):
        ogbench_source.check_finite(path, key, rows[key], first)
    actions = action_bounds.to_stored(path, rows["actions"], bounds, first)
    ends_here = stops[start:stop] - first  # episode stops, relative to `first`
    terminated = terminals[first:last]
    if "next_observations" in keys:
        keep = np.ones(last - first, bool)
        next_observations = rows["next_observations"]
    else:
        # s' = the next row's observation; a terminal last row keeps its own state (masked out).
        next_observations = np.concatenate([rows["observations"][1:], rows["observations"][-1:]])
        last_rows = ends_here - 1
        next_observations[last_rows] = rows["observations"][last_rows]
        keep = np.ones(last - first, bool)
        keep[last_rows] = terminated[last_rows]
    episode_end = np.zeros(last - first, bool)
    for begin, end in zip(starts[start:stop] - first, ends_here):
        kept = np.flatnonzero(keep[begin:end])
        if len(kept):
            episode_end[begin + kept[-1]] = True
    returns = [float(np.sum(rows["rewards"][begin:end], dtype=np.float64))
               for begin, end in zip(starts[start:stop] - first, ends_here)]
    columns = {
        schema.OBSERVATIONS: rows["observations"][keep],
        schema.ACTIONS: actions[keep],
        schema.NEXT_OBSERVATIONS: next_observations[keep],
        schema.TERMINALS: episode_end[keep],
        schema.reward_feature(schema.DEFAULT_REWARD_KEY): rows["rewards"][keep],
        schema.mask_feature(schema.DEFAULT_REWARD_KEY): 1.0 - terminated[keep],
    }
    return {name: values.astype(np.float32) for name, values in columns.items()}, stop - start, returns


def release_caches() -> None:
    _episodes_cached.cache_clear()
