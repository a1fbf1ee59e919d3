"""The version watcher as TF Serving's: failed loads retried, odd folder names ignored, states true."""
import os
import shutil

from serving.servable import VersionedModel
from serving.versions import list_versions


def test_only_plain_integer_folders_are_versions(tmp_path):
    for name in ["3", "12", "0", "07", "7.tmp", "²", "٧", "-1", "1e3", "abc", "99999999999999999999"]:
        (tmp_path / name).mkdir()
    (tmp_path / "5").write_text("a file, not a folder")
    assert list_versions(str(tmp_path)) == [0, 3, 12]
    assert list_versions(str(tmp_path / "5")) == []  # a file as base path: no versions
    assert list_versions(str(tmp_path / "missing")) == []


def test_a_failed_load_is_retried_until_the_copy_completes(export_dir, tmp_path):
    model = VersionedModel("sorl", str(tmp_path), max_batch_size=8)
    (tmp_path / "²").mkdir()  # int() refuses it: must be ignored, not fatal
    (tmp_path / "1").mkdir()  # a copy in progress: nothing in it yet
    for _ in range(3):
        assert model.poll_once() is None
    state, message = dict((v, (s, m)) for v, s, m in model.version_states())[1]
    assert state == "END" and "load failed" in message
    shutil.rmtree(tmp_path / "1")
    shutil.copytree(export_dir, tmp_path / "1")  # the copy completes
    assert model.poll_once() == 1
    assert model.version_states() == [(1, "AVAILABLE", "")]


def test_a_replaced_version_is_unloading_while_requests_use_it(export_dir, tmp_path):
    shutil.copytree(export_dir, tmp_path / "1")
    model = VersionedModel("sorl", str(tmp_path), max_batch_size=8)
    assert model.poll_once() == 1
    with model.serving(None) as servable:
        shutil.copytree(export_dir, tmp_path / "2")
        assert model.poll_once() == 2
        assert servable.version == 1
        assert model.version_states() == [(2, "AVAILABLE", ""), (1, "UNLOADING", "")]
    assert model.version_states() == [(2, "AVAILABLE", ""), (1, "END", "")]
    os.makedirs(tmp_path / "3")  # fails, then a newer good version supersedes it
    assert model.poll_once() == 2
    shutil.copytree(export_dir, tmp_path / "4")
    assert model.poll_once() == 4
    states = {v: (s, m) for v, s, m in model.version_states()}
    assert states[4] == ("AVAILABLE", "") and states[2] == ("END", "")
    assert states[3][0] == "END" and "load failed" in states[3][1]
