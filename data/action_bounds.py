"""Action bounds of generic sources and the affine map of their actions onto SORL's [-1, 1].

A source whose actions live in a Box [low, high] (env units) is stored mapped:
a = 2 (x - low) / (high - low) - 1, then clipped to +-schema.ACTION_CLIP; metadata.json keeps
`action_bounds` = {"low": [...], "high": [...]} so training and export map back. Bounds come from
--action_low/--action_high, else from a registered --eval_env's action space, else from the
dataset itself (a Minari dataset's action_space); an npz without any of these must already hold
actions in [-1, 1] (bounds null: identity), which the value checks enforce.
"""

import numpy as np

from data.errors import DataError

HOW_TO_GIVE = ("pass the env's finite bounds with --action_low=L1,L2,... --action_high=H1,H2,... "
               "(one value each, or one per action dimension), or --eval_env=GYM_ID of a registered "
               "env whose action space is a bounded Box")


def checked(where: str, low, high, action_dim: int) -> dict:
    """{"low": [...], "high": [...]} of `action_dim` floats; DataError unless finite with low < high."""
    values = {}
    for name, given in (("low", low), ("high", high)):
        array = np.broadcast_to(np.asarray(given, np.float64), (action_dim,)) if np.ndim(given) == 0 else \
            np.asarray(given, np.float64)
        if array.shape != (action_dim,):
            raise DataError(f"{where}: action bounds '{name}' has {array.size} values {array.tolist()}, but the "
                            f"actions have {action_dim} dimensions; give one value or {action_dim}.")
        bad = np.flatnonzero(~np.isfinite(array))
        if len(bad):
            raise DataError(f"{where}: action bound {name}[{bad[0]}] is {array[bad[0]]}; actions are mapped "
                            f"affinely from finite bounds onto [-1, 1]: {HOW_TO_GIVE}.")
        values[name] = array
    wrong = np.flatnonzero(values["low"] >= values["high"])
    if len(wrong):
        i = wrong[0]
        raise DataError(f"{where}: action bounds low[{i}]={values['low'][i]} is not below high[{i}]="
                        f"{values['high'][i]}; every dimension needs low < high: {HOW_TO_GIVE}.")
    return {"low": values["low"].tolist(), "high": values["high"].tolist()}


def parse_flag(name: str, text: str) -> list:
    """'--action_low=-2' or '-2,-1.5' -> floats; DataError naming the flag otherwise."""
    try:
        return [float(part) for part in str(text).split(",")]
    except ValueError:
        raise DataError(f"--{name}={text!r}: expected numbers separated by commas, e.g. --{name}=-2,-2.") from None


def from_flags(action_low, action_high, action_dim: int) -> dict | None:
    """Bounds from --action_low/--action_high (both or neither), None when neither is given."""
    if action_low is None and action_high is None:
        return None
    if action_low is None or action_high is None:
        raise DataError("--action_low/--action_high: give both bounds (or neither).")
    low, high = parse_flag("action_low", action_low), parse_flag("action_high", action_high)
    return checked("--action_low/--action_high", low if len(low) > 1 else low[0],
                   high if len(high) > 1 else high[0], action_dim)


def from_registered_env(env_id: str, action_dim: int) -> dict:
    """The bounds of a registered gymnasium env's Box action space (the env is built from the
    registry, never from anything a dataset names)."""
    import gymnasium

    if env_id not in gymnasium.envs.registry:
        raise DataError(f"--eval_env={env_id}: not a registered gymnasium env id (e.g. Pendulum-v1, Hopper-v5); "
                        f"register it first or give --action_low/--action_high.")
    env = gymnasium.make(env_id)
    try:
        space = env.action_space
    finally:
        env.close()
    if not isinstance(space, gymnasium.spaces.Box) or len(space.shape) != 1:
        raise DataError(f"--eval_env={env_id}: its action space {space} is not a flat Box; SORL takes "
                        f"continuous vector actions.")
    return checked(f"--eval_env={env_id} action space", space.low, space.high, action_dim)


def to_unit(actions: np.ndarray, bounds: dict | None) -> np.ndarray:
    """Actions in env units -> [-1, 1] (float64); identity when `bounds` is None."""
    actions = np.asarray(actions, np.float64)
    if bounds is None:
        return actions
    low, high = np.asarray(bounds["low"], np.float64), np.asarray(bounds["high"], np.float64)
    return 2.0 * (actions - low) / (high - low) - 1.0


def to_stored(where: str, actions: np.ndarray, bounds: dict | None, row_offset: int = 0) -> np.ndarray:
    """Actions as the TFRecords store them: mapped (`to_unit`), checked and clipped to
    +-schema.ACTION_CLIP. An action beyond its bounds by more than schema.ACTION_TOLERANCE (in
    [-1, 1] units) is bad data, not rounding: DataError naming the row, column and value."""
    from data import schema

    unit = to_unit(actions, bounds)
    outside = np.abs(unit) > 1.0 + schema.ACTION_TOLERANCE
    if outside.any():
        row, column = np.argwhere(outside)[0]
        value = np.asarray(actions)[row, column]
        if bounds is None:
            raise DataError(f"{where}: field 'actions' row {row + row_offset} column {column} is {value}, outside "
                            f"[-1, 1], and no action bounds were given: {HOW_TO_GIVE}.")
        raise DataError(f"{where}: field 'actions' row {row + row_offset} column {column} is {value}, outside the "
                        f"action bounds [{bounds['low'][column]}, {bounds['high'][column]}]; fix the data or "
                        f"give the bounds the data was recorded with (--action_low/--action_high).")
    return np.clip(unit, -schema.ACTION_CLIP, schema.ACTION_CLIP)
