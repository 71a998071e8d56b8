"""What a running agent process has loaded (issue 11: idle memory), and a TLS receiver's certificate.

`probed_agent` runs the agent as in production (`logagent run -c CFG`, a subprocess) through a few lines that
install a SIGUSR1 handler and nothing else (no thread: `logagent run` parses its YAML in a child only while it has
no other thread). `modules()` sends the signal; the handler, run by the agent's main thread between two steps of
its event loop, writes `sys.modules`. The shared objects mapped (`/proc/PID/maps`) are read from outside.
"""

from __future__ import annotations

import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ops_support import Agent

PROBE = """
import os, runpy, signal, sys
out = os.environ["IDLE_PROBE_OUT"]
def dump(signum, frame):
    with open(out + ".tmp", "w") as f:
        f.write("\\n".join(sorted(sys.modules)))
    os.rename(out + ".tmp", out)
signal.signal(signal.SIGUSR1, dump)
sys.argv = ["logagent", *sys.argv[1:]]
runpy.run_module("logagent", run_name="__main__", alter_sys=True)
"""


class ProbedAgent(Agent):
    def __init__(self, config: Path, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.probe_out = workdir / "probe.modules"
        super().__init__(config, workdir, env={"IDLE_PROBE_OUT": str(self.probe_out), "NOTIFY_SOCKET": "",
                                               **(env or {})},
                         argv=[sys.executable, "-c", PROBE, "run", "-c", str(config)])

    def modules(self, timeout: float = 20.0) -> set[str]:
        """The agent's `sys.modules` now (its main thread answers SIGUSR1)."""
        self.probe_out.unlink(missing_ok=True)
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while not self.probe_out.exists():
            assert self.proc.poll() is None, self.stderr_path.read_text()
            assert time.monotonic() < deadline, "the probe did not write sys.modules"
            time.sleep(0.02)
        return set(self.probe_out.read_text().split("\n"))

    def maps(self) -> str:
        return Path(f"/proc/{self.proc.pid}/maps").read_text()


TLS_LIBS = ("libssl", "libcrypto", "_ssl.cpython")


def self_signed(d: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 signed by its own key (openssl CLI, EC P-256): (cert file, key file)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available to make a test certificate")
    cert, key = d / "server.pem", d / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=30)
    return str(cert), str(key)


def server_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx

