"""Start and stop a real `duquant serve` subprocess on 127.0.0.1 for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from benchmarks.serve.servers import free_port

# The byte-level tiny tokenizer ships no chat template; vLLM's chat endpoint needs one.
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "assistant:")


class ServerProcess:
    """`python -m duquant_serve.cli serve CHECKPOINT --host 127.0.0.1 --port P ARGS` in its own
    process group, output to `log`."""

    def __init__(self, checkpoint: Path, args: list[str], log: Path,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        full_env = dict(os.environ)
        full_env.pop("DUQUANT_VALIDATED_CHECKPOINT", None)
        full_env.update(env or {})
        self._log_file = open(log, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "duquant_serve.cli", "serve", str(checkpoint),
             "--host", "127.0.0.1", "--port", str(self.port), *args],
            stdout=self._log_file, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
        self.pid = self.proc.pid  # the API server itself (duquant serve runs it in-process)

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def wait_healthy(self, timeout: float = 300) -> float:
        t0 = time.perf_counter()
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited {self.proc.returncode}:\n{self.tail()}")
            if time.perf_counter() - t0 > timeout:
                self.stop()
                pytest.fail(f"server not healthy after {timeout} s:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                pass
            time.sleep(1)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM to the API server (what a supervisor sends; vLLM stops its engine processes
        itself); only if it hangs, SIGKILL our own process group."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        try:  # engine processes left behind by a crash: our own group only
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._log_file.close()
        return self.proc.returncode
