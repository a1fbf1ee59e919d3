"""data.files: a file appears whole or not at all, with the permissions open() would give it."""
import os
import stat

import pytest

from data import files


def test_writers_replace_whole_files_and_leave_no_temporary(tmp_path):
    path = tmp_path / "sub" / "out.json"
    files.write_json(path, {"a": 1})
    files.write_json(path, {"a": 2}, indent=None)
    assert path.read_text() == '{"a": 2}\n'
    files.write_csv(tmp_path / "rows.csv", [{"x": 1, "y": 2}], columns=("x", "y"))
    assert (tmp_path / "rows.csv").read_text().splitlines() == ["x,y", "1,2"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out.json", "rows.csv", "sub"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = files.write_text(tmp_path / "out.txt", "old")
    with pytest.raises(RuntimeError):
        with files.atomic_path(path) as temporary:
            temporary.write_text("half")
            raise RuntimeError("writer failed")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]


def test_files_get_the_permissions_of_open(tmp_path):
    umask = os.umask(0o022)
    try:
        path = files.write_bytes(tmp_path / "data.npz", b"x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_leftover_temporaries_are_the_names_atomic_path_gives(tmp_path):
    from data import files

    for name in (".config.json.0123abcd.tmp", ".learning_curve.png.89abcdef.tmp.png", "config.json",
                 ".hidden", "x.0123abcd.tmp"):
        (tmp_path / name).write_text("x")
    (tmp_path / ".dir.0123abcd.tmp").mkdir()
    assert [p.name for p in files.leftover_temporaries(tmp_path)] == [
        ".config.json.0123abcd.tmp", ".learning_curve.png.89abcdef.tmp.png"]
    with files.atomic_path(tmp_path / "y.csv") as temporary:
        assert files.TEMPORARY_NAME.match(temporary.name)
    assert files.leftover_temporaries(tmp_path / "missing") == []
