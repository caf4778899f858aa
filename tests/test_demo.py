"""`modeld demo` end to end: a real demo process, which runs a real daemon, on temporary folders.

The demo is run as `python -m modeld.daemon.cli demo`, the `modeld demo` command, so the test sees
exactly what a person at the terminal sees.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
DEMO = ["-m", "modeld.daemon.cli"]


def demo_env(tmp: Path) -> dict[str, str]:
    tmp.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELD_")}
    env["TMPDIR"] = str(tmp)  # the demo's workspace goes here, so the test sees what is left
    env["NO_COLOR"] = "1"
    return env


def daemon_pid(output: str) -> int:
    found = re.search(r"daemon running \(pid (\d+)\)", output)
    assert found, output
    return int(found.group(1))


def assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_demo_tells_the_story_and_leaves_nothing_behind(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    # without --duration the demo runs until Ctrl-C: the 90 s guard fails an ignored one
    done = subprocess.run([sys.executable, *DEMO, "demo", "--duration", "12"],
                          cwd=REPO, env=demo_env(tmp), capture_output=True, text=True,
                          timeout=90)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "dashboard: http://127.0.0.1:" in out
    assert re.search(r"trained IsolationForest \S+: F1 \d", out)
    assert re.search(r"trained LocalOutlierFactor \S+: F1 \d", out)
    swap = re.search(r"HOT SWAP (\S+) -> (\S+)", out)
    assert swap, out
    assert swap.group(1) != swap.group(2)
    assert re.search(rf"scored [\d,]+ records with {re.escape(swap.group(2))}", out), \
        "scoring went on with the new model"
    assert "anomaly  score" in out
    assert "phase: ATTACK" in out
    assert "phase: the radio environment degrades" in out
    assert re.search(r"done: [\d,]+ records scored, [\d,]+ anomalies, 1 hot swap", out)
    assert "daemon stopped (exit status 0)" in out
    assert "workspace removed" in out
    assert list(tmp.iterdir()) == [], "the temporary workspace is removed"
    assert_gone(daemon_pid(out))


def test_ctrl_c_stops_the_demo_cleanly(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    proc = subprocess.Popen([sys.executable, *DEMO, "demo"], cwd=REPO, env=demo_env(tmp),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []
    streaming = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "streaming about" in line:
                streaming.set()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        assert streaming.wait(60), "".join(lines)
        # what a terminal does on Ctrl-C: SIGINT to the foreground process group (the
        # daemon runs in a session of its own and is stopped by the demo)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(30) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(10)
        assert proc.stdout is not None
        proc.stdout.close()
    out = "".join(lines)
    assert "stopping (SIGINT)" in out
    assert "daemon stopped (exit status 0)" in out
    assert "workspace removed" in out
    assert list(tmp.iterdir()) == []
    assert_gone(daemon_pid(out))


def test_keep_keeps_the_workspace_even_when_stopped_during_setup(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    proc = subprocess.Popen([sys.executable, *DEMO, "demo", "--keep"], cwd=REPO,
                            env=demo_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    lines: list[str] = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            lines.append(line)
            if "trained IsolationForest" in line:
                os.killpg(proc.pid, signal.SIGINT)
                break
        lines += proc.stdout.readlines()
        assert proc.wait(30) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    out = "".join(lines)
    assert "stopping (SIGINT)" in out
    assert "streaming" not in out
    (workspace,) = tmp.iterdir()
    assert f"kept {workspace}" in out
    assert (workspace / "logs" / "week1.jsonl").stat().st_size > 0
    (model,) = (workspace / "training" / "models").iterdir()
    assert (model / "metadata.json").is_file()
    if "daemon running" in out:  # the signal came while the daemon was starting
        assert_gone(daemon_pid(out))
