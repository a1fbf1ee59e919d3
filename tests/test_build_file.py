"""BUILD mirrors the tree: every module and entry point has a target, every test file a py_test."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY_DIRS = ("data", "models", "pipeline", "serving", "interop", "bench")
RULES = ("py_library", "py_binary", "py_test", "filegroup")


def read_build_targets(path: Path, root: Path | None = None) -> list[dict]:
    """The rule calls of a BUILD file as dicts (rule kind under 'kind'), with `glob` expanded in `root`
    (default: the BUILD file's folder).

    Starlark is a dialect of Python, and BUILD here uses only what the two share (assignments, lists,
    string methods, comprehensions, calls), so the file runs as Python with each rule recording its
    keyword arguments: globs and generated targets are read as Bazel expands them.
    """
    root = path.parent if root is None else root
    targets = []

    def rule(kind):
        def record(**kwargs):
            targets.append({"kind": kind, **kwargs})
        return record

    def glob(include, exclude=()):
        def matches(patterns):
            return {p.relative_to(root).as_posix() for pattern in patterns for p in root.glob(pattern) if p.is_file()}
        return sorted(matches(include) - matches(exclude))

    def ignored(*args, **kwargs):
        return None

    namespace = {"glob": glob, "load": ignored, "package": ignored, "exports_files": ignored,
                 **{kind: rule(kind) for kind in RULES}}
    exec(compile(path.read_text(), str(path), "exec"), namespace)  # noqa: S102  (our own BUILD file)
    return targets


@pytest.fixture(scope="module")
def targets():
    return read_build_targets(ROOT / "BUILD")


def srcs_of(targets, *kinds):
    return {src for t in targets if t["kind"] in kinds for src in (t.get("srcs") or [])}


def tracked_python_files(*dirs: str) -> set[str]:
    files = set()
    for d in dirs:
        for p in (ROOT / d).rglob("*.py"):
            rel = p.relative_to(ROOT).as_posix()
            if "/__pycache__/" not in rel:
                files.add(rel)
    return files


def entry_points() -> set[str]:
    """Modules that run as scripts: those with an `if __name__ == "__main__":` block."""
    found = set()
    for rel in tracked_python_files("pipeline", "serving"):
        for node in ast.parse((ROOT / rel).read_text()).body:
            if isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'":
                found.add(rel)
    return found


def test_every_module_belongs_to_a_library_or_binary(targets):
    covered = srcs_of(targets, "py_library", "py_binary")
    missing = sorted(f for f in tracked_python_files(*LIBRARY_DIRS) if f not in covered)
    assert not missing, f"add these modules to a py_library or py_binary in BUILD: {missing}"


def test_every_entry_point_has_a_py_binary(targets):
    mains = {t.get("main") for t in targets if t["kind"] == "py_binary"}
    missing = sorted(entry_points() - mains)
    assert not missing, f"add these scripts to ENTRY_POINTS in BUILD: {missing}"


def test_every_test_file_has_a_py_test(targets):
    covered = srcs_of(targets, "py_test")
    test_files = {f for f in tracked_python_files("tests") if Path(f).name.startswith("test_")}
    missing = sorted(test_files - covered)
    assert not missing, f"add a py_test to BUILD for: {missing}"


def test_every_listed_source_exists(targets):
    listed = srcs_of(targets, "py_library", "py_binary", "py_test")
    absent = sorted(f for f in listed if not (ROOT / f).is_file())
    assert not absent, f"BUILD lists files that do not exist: {absent}"


def test_target_names_are_unique(targets):
    names = [t["name"] for t in targets]
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})


def test_targets_ci_and_readme_name_exist(targets):
    names = {t["name"] for t in targets}
    assert {"test_build_file", "data_test_data_schema", "train", "server"} <= names


def test_the_build_reader_sees_what_is_written(tmp_path):
    (tmp_path / "lib").mkdir()
    for name in ("lib/a.py", "lib/b.py", "lib/main.py"):
        (tmp_path / name).write_text("")
    build = tmp_path / "BUILD"
    build.write_text(
        'load("x.bzl", "y")\n'
        'MAINS = ["lib/main.py"]\n'
        'py_library(name = "lib", srcs = glob(["lib/*.py"], exclude = MAINS), deps = [":other"])\n'
        '[py_binary(name = m.split("/")[-1][:-len(".py")], srcs = [m], main = m) for m in MAINS]\n'
    )
    assert read_build_targets(build) == [
        {"kind": "py_library", "name": "lib", "srcs": ["lib/a.py", "lib/b.py"], "deps": [":other"]},
        {"kind": "py_binary", "name": "main", "srcs": ["lib/main.py"], "main": "lib/main.py"},
    ]
