"""Raw data on S3 (`data.path: s3://bucket/prefix`) against a real SeaweedFS: listed over
several pages, fetched in parallel into an ETag-keyed cache, one injected transient
failure survived by the retries, and prepared into the very data version the same
files give from a local folder."""

from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lepton_core.errors import DataError
from lepton_core.params import DataParams
from tests.conftest import lepton_env_vars, make_project
from tests.s3util import SeaweedS3

BUCKET = "rawdata"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    from effects.runtime.procs import pid_alive

    server = SeaweedS3(tmp_path_factory.mktemp("s3"))
    server.start()
    try:
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        server.kill()
        assert not pid_alive(server.proc.pid)


@pytest.fixture()
def settings(tmp_path, monkeypatch, s3):
    from effects.runtime.settings import get_settings

    make_project(tmp_path / "project")
    for k, v in {
        **lepton_env_vars(tmp_path),
        "LEPTON_S3_ENDPOINT_URL": s3.url,
        "AWS_ACCESS_KEY_ID": s3.key,
        "AWS_SECRET_ACCESS_KEY": s3.secret,
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    return get_settings()


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def upload_folder(s3, prefix: str, n_per_class: int = 12) -> dict[str, bytes]:
    files = {f"{c}/{i:03d}.png": png(100 * k + i) for k, c in enumerate("abc") for i in range(n_per_class)}
    c = s3.client()
    for rel, body in files.items():
        c.put_object(Bucket=BUCKET, Key=f"{prefix}/{rel}", Body=body)
    return files


class Recorder:
    """botocore event hooks: counts requests per operation and the threads that sent
    GetObject; fails the first GetObject of `fail_key` with a 503 (SlowDown) answer
    before it reaches the server, as a throttled or restarting S3 would."""

    def __init__(self, client, fail_key: str | None = None):
        self.calls: dict[str, int] = {}
        self.threads: set[str] = set()
        self.fail_key, self.failed = fail_key, 0
        self.lock = threading.Lock()
        client.meta.events.register("before-call.s3", self._count)
        client.meta.events.register("before-send.s3.GetObject", self._send)

    def _count(self, model, **kw):
        with self.lock:
            self.calls[model.name] = self.calls.get(model.name, 0) + 1

    def _send(self, request, **kw):
        from botocore.awsrequest import AWSResponse

        with self.lock:
            self.threads.add(threading.current_thread().name)
            if self.fail_key and request.url.split("?")[0].endswith(self.fail_key) and not self.failed:
                self.failed += 1
                body = b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>"

                class Raw:
                    def stream(self, **_):
                        yield body

                return AWSResponse(request.url, 503, {"Content-Type": "application/xml"}, Raw())
        return None


def local_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def test_a_prefix_is_listed_over_pages_fetched_in_parallel_and_a_transient_failure_is_retried(s3, settings):
    from effects.data.data_source import fetch, s3_client

    files = upload_folder(s3, "imgs")
    client = s3_client(settings, workers=4)
    rec = Recorder(client, fail_key="imgs/b/005.png")
    root = fetch(f"s3://{BUCKET}/imgs", settings, workers=4, page_size=7, client=client)
    assert local_files(root) == files
    assert rec.calls["ListObjectsV2"] == -(-len(files) // 7)  # 36 objects, 7 a page: 6 pages
    assert rec.failed == 1 and rec.calls["GetObject"] == len(files)  # the 503 retried inside the call
    assert len(rec.threads) > 1  # downloads ran on more than one thread
    assert not [p for p in root.rglob("*.part")]

    # a rerun fetches only what changed (by ETag) and drops what is gone
    c = s3.client()
    c.put_object(Bucket=BUCKET, Key="imgs/a/001.png", Body=png(9999))
    c.delete_object(Bucket=BUCKET, Key="imgs/c/000.png")
    files["a/001.png"] = png(9999)
    del files["c/000.png"]
    client = s3_client(settings, workers=4)
    rec = Recorder(client)
    assert fetch(f"s3://{BUCKET}/imgs", settings, workers=4, page_size=7, client=client) == root
    assert local_files(root) == files
    assert rec.calls.get("GetObject", 0) == 1


def test_without_retries_the_injected_failure_is_fatal(s3, settings, monkeypatch):
    """The same injected 503 with one attempt per request and per object: the fetch
    fails (so the retries are what the test above relies on)."""
    from botocore.exceptions import ClientError

    from effects.data import data_source

    upload_folder(s3, "once", n_per_class=3)
    monkeypatch.setattr(data_source, "CLIENT_ATTEMPTS", 1)
    monkeypatch.setattr(data_source, "OBJECT_TRIES", 1)
    client = data_source.s3_client(settings, workers=2)
    Recorder(client, fail_key="once/a/001.png")
    with pytest.raises(ClientError, match="SlowDown|503"):
        data_source.fetch(f"s3://{BUCKET}/once", settings, workers=2, client=client)
    assert not list(data_source.cache_dir(f"s3://{BUCKET}/once", settings).rglob("*.part"))


def test_an_s3_image_folder_gives_the_data_version_of_the_same_local_folder(s3, settings, tmp_path):
    from effects.data.dvc_store import prepare_cache_key, version_dataset

    files = upload_folder(s3, "same", n_per_class=15)
    local = tmp_path / "local"
    for rel, body in files.items():
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        (local / rel).write_bytes(body)
    remote = version_dataset(DataParams(format="imagefolder", path=f"s3://{BUCKET}/same"), settings)
    here = version_dataset(DataParams(format="imagefolder", path=str(local)), settings)
    assert remote.version == here.version and remote.report["kept"] == 45
    key = prepare_cache_key(DataParams(format="imagefolder", path=f"s3://{BUCKET}/same"), settings)
    s3.client().put_object(Bucket=BUCKET, Key="same/a/000.png", Body=png(4242))
    assert prepare_cache_key(DataParams(format="imagefolder", path=f"s3://{BUCKET}/same"), settings) != key


def test_a_single_object_is_a_file_source_and_a_missing_prefix_is_one_line(s3, settings, tmp_path):
    from effects.data.data_source import fetch
    from lepton_core.data.prepare import prepare_from_params

    rng = np.random.default_rng(0)
    rows = ["f0,f1,label"] + [f"{a:.4f},{b:.4f},c{int(a > 0)}" for a, b in rng.normal(size=(90, 2))]
    s3.client().put_object(Bucket=BUCKET, Key="tables/t.csv", Body=("\n".join(rows) + "\n").encode())
    path = fetch(f"s3://{BUCKET}/tables/t.csv", settings)
    assert path.is_file() and path.name == "t.csv"
    report = prepare_from_params(DataParams(format="csv", path=str(path)), tmp_path / "out")
    assert report["kept"] == 90
    with pytest.raises(DataError, match="no such S3 prefix or object"):
        fetch(f"s3://{BUCKET}/nothing-here", settings)
    assert hashlib.sha256(path.read_bytes()).hexdigest()  # the cached copy is a plain file


def test_the_cli_takes_an_s3_prefix_as_data(lepton_env):
    """`--data s3://...` is no local path to check: it reaches the params (refused here
    for another reason, before any work) instead of `no such file or folder`."""
    from tests.conftest import run_cli

    _, env = lepton_env
    r = run_cli(
        ["retrain", "--data", "s3://bucket/prefix", "--format", "imagefolder", "--set", "train.epochs=0"],
        env,
        timeout=120,
    )
    assert r.returncode != 0 and "no such file" not in r.stderr and "epochs" in r.stderr, r.stderr
    r = run_cli(["retrain", "--data", "not/here", "--format", "imagefolder"], env, timeout=120)
    assert r.returncode != 0 and "not/here: no such file or folder" in r.stderr, r.stderr
