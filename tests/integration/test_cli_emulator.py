"""`microbus emulator` as scripts and shells start it: output to a file or pipe, no terminal, in the background."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from microbus.testing import wait_for

pytestmark = pytest.mark.integration
MICROBUS = str(Path(sys.executable).parent / "microbus")
URL = re.compile(r"http://127\.0\.0\.1:(\d+)")


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/moto-api/", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def state_of(pid: int) -> str | None:
    """The kernel's process state letter (R, S, T for stopped …), None when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def assert_keeps_serving(process: subprocess.Popen, url: str) -> None:
    wait_for(lambda: answers(url), timeout_s=30, what="the emulator to answer")
    time.sleep(1.5)  # today it exits right after printing the URL
    assert process.poll() is None, "the emulator exited instead of serving"
    assert state_of(process.pid) not in ("T", "t", None)
    assert answers(url)


def stop(process: subprocess.Popen, url: str) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0
    wait_for(lambda: not answers(url), timeout_s=10, what="the moto server to stop too")


def test_the_emulator_keeps_serving_with_its_output_in_a_file_and_no_stdin(tmp_path):
    log = tmp_path / "emulator.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [MICROBUS, "emulator", "--no-topology"], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        url = wait_for(lambda: URL.search(log.read_text()), timeout_s=30, what="the URL").group(0)
        assert_keeps_serving(process, url)
        stop(process, url)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def test_the_emulator_keeps_serving_with_a_terminal_as_stdin_and_a_pipe_as_stdout():
    controller, terminal = os.openpty()
    process = subprocess.Popen(
        [MICROBUS, "emulator", "--no-topology"], stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    os.close(terminal)
    try:
        assert process.stdout is not None
        url = URL.search(process.stdout.readline().decode()).group(0)
        assert_keeps_serving(process, url)
        stop(process, url)
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stdout.close()


def read_until(fd: int, pattern: re.Pattern[str], timeout_s: float) -> re.Match[str]:
    """Read a terminal's output until ``pattern`` shows up."""
    seen = ""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 4096).decode(errors="replace")
            except OSError:
                break
            match = pattern.search(seen)
            if match:
                return match
    raise AssertionError(f"{pattern.pattern!r} not in the terminal's output: {seen[-2000:]!r}")


@pytest.mark.parametrize("redirect", ["", "> emulator.log 2>&1"], ids=["output-to-the-terminal", "output-to-a-file"])
def test_the_emulator_started_with_an_ampersand_in_an_interactive_shell_keeps_serving(tmp_path, redirect):
    # Given an interactive shell on a terminal, with job control
    controller, terminal = os.openpty()
    import fcntl
    import termios

    def controlling_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    shell = subprocess.Popen(
        ["bash", "--norc", "--noprofile", "-i"],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        cwd=tmp_path,
        start_new_session=True,
        preexec_fn=controlling_terminal,  # noqa: PLW1509 - the shell needs the terminal as its controlling one
        env={**os.environ, "PS1": "$ "},
    )
    os.close(terminal)
    pid = None
    try:
        # When the emulator is started in the background
        os.write(controller, f"{MICROBUS} emulator --no-topology {redirect} & echo PID=$!\n".encode())
        pid = int(read_until(controller, re.compile(r"PID=(\d+)"), 30).group(1))
        if redirect:
            log = tmp_path / "emulator.log"
            url = wait_for(lambda: log.exists() and URL.search(log.read_text()), timeout_s=30).group(0)
        else:
            url = read_until(controller, URL, 30).group(0)
        # Then it serves, neither exited nor stopped by the terminal
        wait_for(lambda: answers(url), timeout_s=30, what="the emulator to answer")
        time.sleep(1.5)
        assert state_of(pid) not in ("T", "t", None), f"state {state_of(pid)}"
        assert answers(url)
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: state_of(pid) in (None, "Z"), timeout_s=15, what="the emulator to stop on SIGTERM")
        wait_for(lambda: not answers(url), timeout_s=10, what="the moto server to stop too")
    finally:
        if pid is not None and state_of(pid) not in (None, "Z"):
            os.kill(pid, signal.SIGKILL)
        shell.kill()
        shell.wait()
        os.close(controller)


def test_port_pid_file_and_endpoint_file_for_scripts(tmp_path):
    port = free_port()
    pid_file, endpoint_file = tmp_path / "emulator.pid", tmp_path / "emulator.url"
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as errors:
        process = subprocess.Popen(
            [MICROBUS, "emulator", "--no-topology", "--port", str(port), "--pid-file", str(pid_file)]
            + ["--endpoint-file", str(endpoint_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
    try:
        try:  # ~2 s on a quiet machine; 60 s for one running three test suites and LocalStack on two cores
            url = wait_for(lambda: endpoint_file.exists() and endpoint_file.read_text().strip(), timeout_s=60)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; the emulator's stderr: {stderr.read_text()[-2000:]!r}") from exc
        assert url == f"http://127.0.0.1:{port}"
        assert answers(url)  # the endpoint file appears once the emulator is ready
        assert int(pid_file.read_text()) == process.pid
        stop(process, url)
        assert not pid_file.exists() and not endpoint_file.exists()
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)  # reaped here, not by the garbage collector in a later test


def test_a_port_in_use_is_a_one_line_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [MICROBUS, "emulator", "--no-topology", "--port", str(port)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    assert f"port {port}" in result.stderr and result.stderr.strip().count("\n") == 0
    assert "Traceback" not in result.stderr


def test_a_reader_that_goes_away_after_the_first_line_does_not_stop_the_emulator(tmp_path):
    # Given a script that reads only the endpoint line, as `microbus emulator | head -1` does
    endpoint_file, log = tmp_path / "emulator.url", tmp_path / "stderr.log"
    with log.open("w") as err:
        process = subprocess.Popen(
            [MICROBUS, "emulator", "--endpoint-file", str(endpoint_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    try:
        url = URL.search(process.stdout.readline().decode()).group(0)
        process.stdout.close()
        # When the topology line is written to the closed pipe, then it keeps serving all the same
        wait_for(lambda: endpoint_file.exists(), timeout_s=60, what="the endpoint file (after the topology line)")
        assert_keeps_serving(process, url)
        stop(process, url)
        assert "Traceback" not in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
