"""Writing a benchmark's results: whole files only, so a reader never sees half of one."""
import json
import os


def write_json(path: str, payload) -> None:
    """Writes `payload` as JSON to `path` (creating its folder) through a temporary file and a rename."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)
