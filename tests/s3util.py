"""A real SeaweedFS S3 server for tests (the `weed` binary beside the interpreter),
on free ports of 127.0.0.1 with one signed identity."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


class SeaweedS3:
    """A real SeaweedFS (master, volume, filer, S3) on free ports of 127.0.0.1, with one
    signed identity; `kill()` is an outage (SIGKILL), `start()` brings it back on the
    same ports and data."""

    def __init__(self, base: Path):
        from effects.runtime.procs import free_port

        self.dir, self.log = base / "weed", base / "weed.log"
        self.dir.mkdir(parents=True)
        self.ports = [free_port() for _ in range(8)]
        self.url = f"http://127.0.0.1:{self.ports[0]}"
        self.key, self.secret = "lepton-test", "lepton-test-secret"
        self.config = base / "s3.json"
        self.config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "t",
                            "credentials": [{"accessKey": self.key, "secretKey": self.secret}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        self.proc = None

    def start(self) -> None:
        import os
        import shutil

        from effects.runtime.procs import spawn

        p = self.ports
        self.proc = spawn(
            [
                shutil.which("weed", path=str(Path(sys.executable).parent)) or "weed",
                f"-logdir={self.dir.parent}",  # glog's files beside its log, not in /tmp
                "server",
                f"-dir={self.dir}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-master.port={p[1]}",
                f"-master.port.grpc={p[2]}",
                f"-volume.port={p[3]}",
                f"-volume.port.grpc={p[4]}",
                "-filer",
                f"-filer.port={p[5]}",
                f"-filer.port.grpc={p[6]}",
                f"-filer.localSocket={self.dir / 'filer.sock'}",
                "-s3",
                f"-s3.port={p[0]}",
                f"-s3.port.grpc={p[7]}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                f"-s3.config={self.config}",
                f"-s3.localSocket={self.dir / 's3.sock'}",
                "-master.telemetry=false",
                "-master.volumeSizeLimitMB=64",
                "-volume.max=16",
            ],
            dict(os.environ),
            self.log,
        )
        c = self.client()
        deadline = time.monotonic() + 90
        while True:  # writable, not merely listening: a put round trip
            try:
                if "lepton" not in [b["Name"] for b in c.list_buckets()["Buckets"]]:
                    c.create_bucket(Bucket="lepton")
                c.put_object(Bucket="lepton", Key="probe", Body=b"ok")
                return
            except Exception:
                assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()[-2000:]
                time.sleep(0.5)

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
        )

    def kill(self) -> None:
        from effects.runtime.procs import pid_alive, stop_group
        from lepton import weed

        stop_group(self.proc.pid, timeout=0)
        self.proc.wait(10)
        assert not pid_alive(self.proc.pid)
        p = self.ports  # the gRPC sockets `weed server` leaves in /tmp
        weed.remove_sockets({"master_grpc": p[2], "volume_grpc": p[4], "filer_grpc": p[6], "s3_grpc": p[7]})
