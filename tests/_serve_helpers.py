"""A real ``nmt serve`` in a subprocess on a free loopback port, for the server tests.

The server picks its own port (``--port 0``) and prints it; its stderr (the access and batch log)
goes to a file the tests read. Every wait is bounded.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from conftest import CLI_ENV, ROOT
from fault_launcher import nmt_args


class Server:
    def __init__(self, checkpoint: Path, log_path: Path, *args: str, env: dict | None = None,
                 fault: str | None = None, ready_timeout: float = 90.0):
        """``fault`` is a spec of tests/fault_launcher.py."""
        self.log_path = log_path
        self._log = open(log_path, "wb")
        full_env = {**CLI_ENV, "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, *nmt_args(fault), "serve", "-m", str(checkpoint), "--port", "0",
             *args], stdout=subprocess.DEVNULL, stderr=self._log, env=full_env, cwd=ROOT)
        try:
            self.url = self._wait_for_url(ready_timeout)
            self._wait_ready(ready_timeout)
        except BaseException:
            self.kill()
            raise

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def _wait_for_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"listening on (http://\S+)", self.log())
            if found:
                return found.group(1)
            if self.proc.poll() is not None:
                raise RuntimeError(f"nmt serve exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise TimeoutError(f"nmt serve printed no address in {timeout} s:\n{self.log()}")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=5.0) as client:
            while time.monotonic() < deadline:
                try:
                    if client.get("/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if self.proc.poll() is not None:
                    raise RuntimeError(f"nmt serve exited with {self.proc.returncode}:\n"
                                       f"{self.log()}")
                time.sleep(0.1)
        raise TimeoutError(f"/health was not 200 within {timeout} s:\n{self.log()}")

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit status (SIGKILL after ``timeout`` seconds)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()
