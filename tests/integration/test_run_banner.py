"""What `make run` prints (scripts/run-banner) works as printed: its Python and Node.js samples
(examples/hello, examples/hello-nodejs) deploy and answer through the CLI it names, run from the
checkout's root as a reader would (the function names made unique for the shared daemon)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from tests.conftest import Daemon, unique_name

REPO = Path(__file__).resolve().parents[2]


def banner_commands(daemon: Daemon) -> list[list[str]]:
    listen = daemon.url.removeprefix("http://")
    done = subprocess.run(
        [str(REPO / "scripts/run-banner"), str(daemon.state_dir), listen],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert f"export FGD_ENDPOINT=http://{listen} FGD_STATE_DIR={daemon.state_dir}" in done.stdout
    return [shlex.split(line) for line in done.stdout.splitlines() if line.strip().startswith(".venv/bin/fgd ")]


def test_printed_python_and_nodejs_samples_deploy_and_answer(daemon: Daemon) -> None:
    commands = banner_commands(daemon)
    verbs = [(argv[1], argv[argv.index("--name") + 1] if "--name" in argv else argv[2]) for argv in commands]
    assert verbs == [
        ("deploy", "hello"),
        ("invoke", "hello"),
        ("logs", "hello"),
        ("deploy", "hello-js"),
        ("invoke", "hello-js"),
    ]
    renamed = {"hello": unique_name("banner-py"), "hello-js": unique_name("banner-js")}
    env = {**os.environ, "FGD_ENDPOINT": daemon.url, "FGD_STATE_DIR": str(daemon.state_dir)}
    answers = []
    for argv in commands:
        # This checkout's fgd (the test's interpreter), whatever .venv/ holds.
        argv = [sys.executable, "-m", "fgd", *(renamed.get(word, word) for word in argv[1:])]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
        assert done.returncode == 0, f"{argv}: {done.stdout}{done.stderr}"
        answers.append(done.stdout)
    assert "runtime Python3." in answers[0]
    assert "runtime Node.js" in answers[3]
    for answer in (answers[1], answers[4]):
        result = json.loads(answer)
        assert result["statusCode"] == 200
        assert json.loads(result["body"])["greeting"] == "hello, fgd"
    assert f"[INFO] hello from {renamed['hello']}" in answers[2]
