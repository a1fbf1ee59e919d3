"""Every command the README shows in a ```bash block runs, with tiny sizes, so the README cannot rot.

The commands run through bash in a scratch directory that links to the code, in README order, with
size flags appended (argparse keeps the last value of a repeated flag, so the README's own values are
overridden, not edited). Blocks fenced as ```text are shown to users but need what a test cannot have
(a TF Serving binary, a browser for TensorBoard, Bazel, a cloud runner).
"""
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CODE_DIRS = ("pipeline", "models", "data", "serving", "interop")
TINY_TRAIN = (
    "--steps=10 --eval_every=10 --checkpoint_every=10 --eval_episodes=1 --batch_size=32"
    " --set actor_hidden_dims=32,32 --set critic_hidden_dims=32,32 --set episode_length=20 --set log_every=5"
    " --set jit_compile=false --no_progress"
)
TINY_FLAGS = {
    "data.gym_recording": "--episodes=3 --val_episodes=3 --max_steps=200",
    "pipeline/generate.py": "--episodes=2 --val_episodes=1 --episode_length=60 --no_progress",
    "pipeline/preprocess.py": "",
    "pipeline/train.py": TINY_TRAIN,
    "serving/export.py": "",
    "pipeline/evaluate.py": "--episodes=1 --euler_steps=1,2 --candidates=1,2 --episode_length=20 --no_progress",
    "serving/server.py": "",
    "saved_model_cli": "",
}


def readme_blocks(kind: str) -> list[list[str]]:
    """The commands of each ```KIND block, continuation lines joined."""
    blocks = re.findall(rf"```{kind}\n(.*?)```", README.read_text(), flags=re.S)
    return [[c.strip() for c in b.replace("\\\n", " ").splitlines() if c.strip() and not c.startswith("#")]
            for b in blocks]


def setup_commands() -> tuple[str, str]:
    blocks = readme_blocks("bash")
    return blocks[0][0], blocks[1][0]


def user_commands() -> list[str]:
    return [c for block in readme_blocks("bash")[2:] for c in block]


def script_of(command: str) -> str:
    scripts = [s for s in TINY_FLAGS if s in command]
    assert len(scripts) == 1, f"README command runs no known entry point (or several): {command}"
    return scripts[0]


def tiny(command: str) -> str:
    return f"{command} {TINY_FLAGS[script_of(command)]}"


@pytest.fixture
def workspace(tmp_path):
    for name in CODE_DIRS:
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


def run(command: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"README command failed: {command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def split_setup(command: str) -> tuple[list[str], str]:
    """(install steps, the step that runs something) of a set-up line 'venv && pip install && run'."""
    steps = [s.strip() for s in command.split("&&")]
    assert steps[:2] == ["python3 -m venv .venv", ".venv/bin/pip install -r requirements.txt"], steps
    return steps[:2], " && ".join(steps[2:])


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    main_job, test_command = setup_commands()
    split_setup(main_job)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci, ".ci/run must run the README's test command verbatim"


def test_readme_main_job_runs_on_a_fresh_workspace(workspace):
    _, main_job = split_setup(setup_commands()[0])
    # Two episodes instead of the main job's own count: its data folder is named after the count.
    proc = run(tiny(main_job.replace(".venv/bin/python", "python")) + " --generate_episodes=2", workspace)
    assert "regenerating play data" in proc.stdout
    run_dir = next((workspace / "artifacts" / "runs").iterdir())
    assert (run_dir / "eval.csv").exists() and (run_dir / "export" / "1" / "saved_model.pb").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_and_predict(command: str, cwd: Path) -> None:
    """Start the README's server on free ports, send one REST predict, stop it."""
    rest = free_port()
    command = re.sub(r"--rest_api_port=\d+", f"--rest_api_port={rest}", command)
    command = re.sub(r"--port=\d+", f"--port={free_port()}", command)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    server = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=cwd, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        name = re.search(r"--model_name=(\S+)", command).group(1)
        deadline, status = time.time() + 120, None
        while time.time() < deadline and status is None:
            try:
                status = json.load(urllib.request.urlopen(f"http://127.0.0.1:{rest}/v1/models/{name}", timeout=2))
            except OSError:
                assert server.poll() is None, server.stdout.read()
                time.sleep(0.5)
        assert status is not None, "server did not answer within 120 s"
        body = json.dumps({"signature_name": "act_k4", "instances": [[0.0] * 28]}).encode()
        reply = json.load(urllib.request.urlopen(f"http://127.0.0.1:{rest}/v1/models/{name}:predict", body, timeout=30))
        actions = np.asarray(reply["predictions"])
        assert actions.shape == (1, 5) and np.all(np.abs(actions) <= 1.0)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_readme_user_commands_run_in_order(workspace):
    commands = user_commands()
    ran = []
    for command in commands:
        script = script_of(command)
        if script == "serving/server.py":
            serve_and_predict(command, workspace)
        elif script == "saved_model_cli":
            shown = run(command, workspace).stdout
            for signature in ("act_k1", "act_k2", "act_k4", "act_k8", "act_k4_best_of_8", "serving_default"):
                assert f"signature_def['{signature}']" in shown
        else:
            run(tiny(command), workspace)
        ran.append(script)
    assert ran == ["pipeline/generate.py", "pipeline/preprocess.py", "pipeline/train.py", "serving/export.py",
                   "saved_model_cli", "serving/server.py", "pipeline/evaluate.py",
                   "data.gym_recording", "pipeline/preprocess.py", "pipeline/train.py", "pipeline/evaluate.py",
                   "serving/export.py"], ran
