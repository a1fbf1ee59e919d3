"""pyproject.toml: the package holds every source package, its commands run, and requirements.txt
pins what it depends on (and installs it)."""
import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOT_SHIPPED = ("tests", "bench", "third_party")
SOURCE_DIRS = ("data", "models", "pipeline", "serving", "interop")


@pytest.fixture(scope="module")
def project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirement_names(lines) -> list[str]:
    """Distribution names of requirement lines (comments, options and `-e .` skipped), normalised."""
    names = []
    for line in lines:
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.append(re.split(r"[\[=<>!~; ]", line)[0].lower().replace("_", "-"))
    return names


def test_every_source_package_is_shipped(project):
    top = [d for d in ROOT.iterdir() if (d / "__init__.py").is_file() and d.name not in NOT_SHIPPED]
    packages = {p.parent.relative_to(ROOT).as_posix().replace("/", ".") for d in top for p in d.rglob("__init__.py")}
    assert set(SOURCE_DIRS) <= packages
    assert set(project["tool"]["setuptools"]["packages"]) == packages


def main_function(target: str) -> ast.FunctionDef:
    module, function = target.split(":")
    path = ROOT / (module.replace(".", "/") + ".py")
    assert path.is_file(), f"{target}: no {path.relative_to(ROOT)}"
    found = [n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef) and n.name == function]
    assert found, f"{target}: {path.relative_to(ROOT)} defines no {function}()"
    return found[0]


def test_console_scripts_name_the_entry_points(project):
    scripts = project["project"]["scripts"]
    assert set(scripts) == {"sorl-generate", "sorl-preprocess", "sorl-train", "sorl-evaluate", "sorl-export",
                            "sorl-serve"}
    for target in scripts.values():
        main_function(target)


def test_console_script_mains_return_nothing(project):
    """The installed command runs `sys.exit(main())`: a returned path or summary would be printed as an
    error and exit with status 1, so a main returns None (or an exit status) and its result is the
    library call's."""
    returning = []
    for name, target in project["project"]["scripts"].items():
        for node in ast.walk(main_function(target)):
            if isinstance(node, ast.Return) and node.value is not None and not (
                    isinstance(node.value, ast.Constant) and isinstance(node.value.value, (int, type(None)))):
                returning.append(f"{name} ({target})")
                break
    assert not returning, f"these mains return a value: {returning}"


def test_dependencies_are_pinned_in_requirements(project):
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    assert lines[-1] == "-e .", "requirements.txt ends by installing this project"
    pinned = requirement_names(lines)
    runtime = requirement_names(project["project"]["dependencies"])
    test_tools = requirement_names(project["project"]["optional-dependencies"]["test"])
    assert sorted(runtime + test_tools) == sorted(pinned)
    assert all("==" in line for line in lines if line and not line.startswith(("#", "-")))


def test_no_module_edits_sys_path():
    """Imports work because the package is installed (requirements.txt), never through a path edit.
    The one exception loads the authors' JAX checkout, a foreign repository, in the benchmark."""
    edit = re.compile(r"sys\.path\.(insert|append|extend)\(|sys\.path\s*\+?=[^=]")
    allowed = {("bench/bench_reference_jax.py", "sys.path.insert(0, os.path.abspath(reference_repo))")}
    found = []
    paths = [ROOT / "conftest.py"] + [p for d in (*SOURCE_DIRS, "bench", "tests") for p in (ROOT / d).rglob("*.py")]
    for path in paths:
        rel = path.relative_to(ROOT).as_posix()
        if rel == "tests/test_packaging.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if edit.search(line) and (rel, line.strip()) not in allowed:
                found.append(f"{rel}:{number}")
    assert not found, f"sys.path edits: {found}"
