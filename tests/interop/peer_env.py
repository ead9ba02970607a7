"""Build and cache the virtualenv that runs the microcosm-pubsub 3.0.0 interop peer.

The peer (``peer.py``) must run microcosm-pubsub itself, with its own dependency set
(``requirements-peer.txt``), isolated from microbus's interpreter. microbus is installed
in the same venv too (editable, without dependencies: the pinned set already has them),
so every interop test runs the peer beside an installed microbus, the way a service in
mid-migration has both. The venv is built once per cache directory and interpreter, and
reused while the requirements file, ``setup.py`` and the base interpreter stay the same
(a stamp file records a hash of them).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
REQUIREMENTS = HERE / "requirements-peer.txt"
PEER_SCRIPT = HERE / "peer.py"

VENV_NAME = "microcosm-pubsub-peer"
STAMP_NAME = ".microbus-peer-stamp"
INSTALL_TIMEOUT_SECONDS = 900


class PeerEnvError(RuntimeError):
    """The peer virtualenv could not be created or populated."""


def requirements_key(requirements: Path = REQUIREMENTS) -> str:
    """Return the cache key: a hash of the requirements file, microbus's setup.py and the base interpreter."""
    digest = hashlib.sha256()
    digest.update(requirements.read_bytes())
    digest.update((ROOT / "setup.py").read_bytes())
    digest.update(f"\0{sys.implementation.cache_tag}\0{sys.version}".encode())
    return digest.hexdigest()


def venv_python(venv_dir: Path) -> Path:
    """Return the interpreter path inside a virtualenv."""
    if os.name == "nt":
        return venv_dir / "Scripts" / "python.exe"
    return venv_dir / "bin" / "python"


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive inter-process lock (no-op where fcntl is unavailable)."""
    if fcntl is None:  # pragma: no cover - non-POSIX
        yield
        return
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(command: list[str], log_path: Path, what: str) -> None:
    """Run a build step, appending its output to the log; raise PeerEnvError on failure."""
    with log_path.open("a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        try:
            result = subprocess.run(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=INSTALL_TIMEOUT_SECONDS,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise PeerEnvError(
                f"Could not {what} for the microcosm-pubsub interop peer ({error}); see {log_path}."
            ) from error
    if result.returncode != 0:
        raise PeerEnvError(
            f"Could not {what} for the microcosm-pubsub interop peer (exit status {result.returncode}); see {log_path}."
        )


def ensure_peer_python(cache_dir: Path) -> Path:
    """Return the python of a venv with ``requirements-peer.txt`` installed, building it if needed.

    The venv lives in ``cache_dir / "microcosm-pubsub-peer-<cache tag>"`` (one per interpreter, so
    suites on several Pythons can share a cache directory). It is rebuilt from scratch
    when its stamp (a hash of the requirements file and of ``sys.executable``'s version)
    is missing or stale, and reused otherwise. Concurrent callers (e.g. pytest-xdist
    workers) serialize on a lock file in ``cache_dir``.

    Raises:
        PeerEnvError: if the venv cannot be created or the requirements fail to install;
            the message is one sentence pointing at the build log.

    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    venv_dir = cache_dir / f"{VENV_NAME}-{sys.implementation.cache_tag}"
    stamp = venv_dir / STAMP_NAME
    python = venv_python(venv_dir)
    key = requirements_key(REQUIREMENTS)

    with _locked(cache_dir / f"{venv_dir.name}.lock"):
        if python.exists() and stamp.exists() and stamp.read_text().strip() == key:
            return python

        log_path = cache_dir / f"{venv_dir.name}-install.log"
        log_path.write_text("")
        shutil.rmtree(venv_dir, ignore_errors=True)
        _run([sys.executable, "-m", "venv", str(venv_dir)], log_path, "create a virtualenv")
        _run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "-r",
                str(REQUIREMENTS),
            ],
            log_path,
            "install requirements-peer.txt",
        )
        _run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--no-deps",
                "--no-build-isolation",
                "-e",
                str(ROOT),
            ],
            log_path,
            "install microbus beside microcosm-pubsub",
        )
        _run(
            [str(python), "-c", "import microcosm_pubsub.daemon, microcosm_pubsub.producer, microbus"],
            log_path,
            "import microcosm-pubsub",
        )
        stamp.write_text(key + "\n")
    return python


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".cache/interop")
    print(ensure_peer_python(target))
