"""`lepton serve` on a real registry (MLflow on SQLite, Prefect test server): raw
digits in, the champion's labels out; every bad request a one-line 4xx; bearer
auth; Prometheus metrics; batching under concurrency; a hot swap under load with
zero errors; the prediction log in the monitor's format, surviving a failing disk."""

from __future__ import annotations

import io
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from lepton_core.params import DataParams, ServeParams, TrainParams

pytestmark = pytest.mark.slow

FAST = TrainParams(epochs=8, width=16, patience=3)


class Running:
    """A ModelServer under uvicorn in a thread, on a free port of 127.0.0.1."""

    def __init__(
        self,
        tmp_path,
        params: ServeParams,
        token: str | None = None,
        log_folder=None,
        alias: str = "champion",
        model: str = "lepton-digits",
    ):
        import uvicorn

        from effects.runtime.procs import free_port
        from effects.runtime.settings import get_settings
        from lepton.serving.app import create_app
        from lepton.serving.server import ModelServer

        self.model = ModelServer(model, alias, params, get_settings(), token, log_folder or tmp_path / "predictions")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.uv = uvicorn.Server(
            uvicorn.Config(create_app(self.model), host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.uv.run, daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if self.request("GET", "/readyz")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("the server did not get ready")

    def __exit__(self, *exc) -> None:
        self.uv.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive()

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        ctype: str = "application/json",
        headers: dict | None = None,
    ) -> tuple[int, dict | str]:
        req = urllib.request.Request(
            self.url + path, data=body, method=method, headers={"Content-Type": ctype, **(headers or {})}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, text = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def predict(self, x, **kw) -> tuple[int, dict]:
        return self.request("POST", "/v1/predict", json.dumps({"instances": np.asarray(x).tolist()}).encode(), **kw)


@pytest.fixture(scope="module")
def champion(lepton_env, prefect_server):
    from effects.data.dvc_store import dataset_path
    from flows.retrain import retrain
    from lepton_core.data.prepare import read_prepared

    first = retrain(data=DataParams(), train=FAST, progress=False)
    assert first["decision"]["promoted"]
    return first, read_prepared(dataset_path(first["data_version"]))


def test_raw_digits_get_the_champions_labels(champion, tmp_path):
    first, prepared = champion
    x, y = prepared.x["test"], prepared.y["test"]
    with Running(tmp_path, ServeParams()) as srv:
        status, out = srv.predict(x[:, 0])  # (N, 8, 8) uint8 as JSON, as a user has them
        assert status == 200, out
        assert out["version"] == first["version"] and out["model"] == "lepton-digits"
        acc = float((np.array(out["labels"]) == y).mean())
        assert acc == pytest.approx(first["metrics"]["test_accuracy"], abs=1e-9)
        assert out["class_names"] == [str(k) for k in out["labels"]]
        assert np.allclose(np.array(out["probabilities"]).sum(1), 1.0, atol=1e-4)
        buf = io.BytesIO()
        np.save(buf, x[:7])
        status, npy = srv.request("POST", "/v1/predict", buf.getvalue(), "application/x-npy")
        assert status == 200 and npy["labels"] == out["labels"][:7]
        status, model = srv.request("GET", "/v1/model")
        assert model["version"] == first["version"] and model["data_version"] == first["data_version"]
        assert model["run_id"] == first["run_id"] and srv.request("GET", "/healthz")[0] == 200


BAD = [
    (
        "wrong shape",
        json.dumps({"instances": np.zeros((2, 1, 5, 8), int).tolist()}).encode(),
        "application/json",
        400,
        "shape",
    ),
    (
        "wrong dtype",
        json.dumps({"instances": (np.ones((2, 1, 8, 8)) / 255).tolist()}).encode(),
        "application/json",
        400,
        "dtype",
    ),
    ("non-finite", b'{"instances": [[[NaN, 1, 2, 3, 4, 5, 6, 7]]]}', "application/json", 400, ""),
    (
        "out of range",
        json.dumps({"instances": np.full((1, 8, 8), 300).tolist()}).encode(),
        "application/json",
        400,
        "0..255",
    ),
    (
        "too many",
        json.dumps({"instances": np.zeros((60, 8, 8), int).tolist()}).encode(),
        "application/json",
        413,
        "over the limit of 50",
    ),
    ("body too big", b'{"instances": [' + b"0, " * 40000 + b"0]}", "application/json", 413, "cap"),
    ("malformed JSON", b'{"instances": [1, 2', "application/json", 400, "malformed JSON"),
    ("not an object", b"[1, 2, 3]", "application/json", 400, "instances"),
    ("wrong content type", b"1,2,3", "text/csv", 415, "content type"),
    ("bad npy", b"\x93NUMPY garbage", "application/x-npy", 400, ".npy"),
    # a header declaring 2**40 bytes on a body of 64: refused before anything is allocated
    (
        "npy header lies",
        b"\x93NUMPY\x01\x00\x76\x00"
        + (b"{'descr': '|u1', 'fortran_order': False, 'shape': (1073741824, 1, 8, 8), }".ljust(117) + b"\n")
        + bytes(64),
        "application/x-npy",
        400,
        "header declares",
    ),
    (
        "npy of objects",
        b"\x93NUMPY\x01\x00\x76\x00"
        + b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }".ljust(117)
        + b"\n"
        + bytes(8),
        "application/x-npy",
        400,
        "object",
    ),
    ("no instances", b'{"instances": []}', "application/json", 400, "no instances"),
]


def test_every_bad_request_is_a_one_line_4xx(champion, tmp_path):
    with Running(tmp_path, ServeParams(max_instances=50, max_body_mb=0.05)) as srv:
        for name, body, ctype, code, words in BAD:
            status, out = srv.request("POST", "/v1/predict", body, ctype)
            assert status == code, (name, status, out)
            assert isinstance(out, dict) and set(out) == {"error"}, (name, out)
            assert words in out["error"] and "\n" not in out["error"] and "Traceback" not in out["error"], name
        assert srv.predict(np.zeros((1, 8, 8), int))[0] == 200  # the server is still fine


def test_bearer_token(champion, tmp_path):
    x = champion[1].x["test"][:2]
    with Running(tmp_path, ServeParams(), token="s3cret-token") as srv:
        assert srv.predict(x)[0] == 401
        assert srv.predict(x, headers={"Authorization": "Bearer wrong"})[0] == 401
        assert srv.request("GET", "/v1/model")[0] == 401
        status, out = srv.predict(x, headers={"Authorization": "Bearer s3cret-token"})
        assert status == 200 and len(out["labels"]) == 2
        assert srv.request("GET", "/healthz")[0] == 200 and srv.request("GET", "/readyz")[0] == 200


def _metrics(srv) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    status, text = srv.request("GET", "/metrics")
    assert status == 200
    return {
        s.name + json.dumps(s.labels, sort_keys=True): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_metrics_and_batching_under_concurrency(champion, tmp_path):
    x = champion[1].x["test"]
    with Running(tmp_path, ServeParams(max_wait_ms=20, max_batch=64)) as srv:
        errors = []
        together = threading.Barrier(16, timeout=60)  # each round's 16 requests sent at once: some share a pass

        def client(k: int) -> None:
            for i in range(10):
                together.wait()
                status, _ = srv.predict(x[(k * 10 + i) % len(x)][None])
                if status != 200:
                    errors.append(status)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors
        srv.request("POST", "/v1/predict", b"{", "application/json")
        m = _metrics(srv)
    assert m['lepton_requests_total{"code": "200"}'] == 160
    assert m['lepton_requests_total{"code": "400"}'] == 1
    assert m["lepton_instances_total{}"] == 160
    batches = m["lepton_batch_size_count{}"]
    assert m["lepton_batch_size_sum{}"] == 160 and batches < 160  # some passes held more than one request
    assert m['lepton_model_version{"alias": "champion", "model": "lepton-digits"}'] == int(champion[0]["version"])
    assert m["lepton_request_seconds_count{}"] == 160


def test_hot_swap_under_load_has_no_failed_or_mixed_request(champion, tmp_path):
    from flows.registry import promote_flow
    from flows.retrain import retrain

    first, prepared = champion
    x = prepared.x["test"]
    with Running(tmp_path, ServeParams(poll_seconds=0.3)) as srv:
        seen, errors, stop = [], [], threading.Event()

        def load() -> None:
            i = 0
            while not stop.is_set():
                status, out = srv.predict(x[i % len(x)][None])
                (seen.append(out["version"]) if status == 200 else errors.append((status, out)))
                i += 1

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            second = retrain(data=DataParams(), train=TrainParams(epochs=2, width=8), progress=False)
            if not second["decision"]["promoted"]:
                assert promote_flow(version=second["version"], force=True)["promoted"]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and srv.request("GET", "/v1/model")[1]["version"] != second["version"]:
                time.sleep(0.1)
            time.sleep(1.0)  # more traffic on the new version
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert not errors, errors[:3]
        assert srv.request("GET", "/v1/model")[1]["version"] == second["version"]
        assert set(seen) == {first["version"], second["version"]}
        # every answer names one version; once the new one answered, the old never did again
        switch = seen.index(second["version"])
        assert first["version"] not in seen[switch + 4 :]  # 4 clients may each hold one older answer
        assert _metrics(srv)["lepton_model_swaps_total{}"] == 1


def test_prediction_log_feeds_the_monitor_and_a_failing_disk_fails_no_prediction(champion, tmp_path):
    from effects.data.data_source import detect_format

    x = champion[1].x["test"]
    folder = tmp_path / "log"
    with Running(tmp_path, ServeParams(log_flush_seconds=0.2), log_folder=folder) as srv:
        assert srv.predict(x[:30])[0] == 200
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not list(folder.glob("*.parquet")):
            time.sleep(0.1)
    import pandas as pd

    df = pd.concat([pd.read_parquet(f) for f in folder.glob("*.parquet")])
    assert len(df) == 30 and detect_format(folder, None) == "predlog"
    assert {"timestamp", "model_version", "request_id", "prediction", "confidence", "f_mean_intensity"} <= set(df)
    assert not list(folder.glob(".*"))  # no half-written part files

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the log folder should be: every write fails")
    with Running(tmp_path, ServeParams(log_flush_seconds=0.2), log_folder=blocked) as srv:
        for _ in range(5):
            assert srv.predict(x[:10])[0] == 200
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and srv.model.log.dropped < 50:
            time.sleep(0.1)
        assert _metrics(srv)["lepton_prediction_log_dropped_rows{}"] == 50


def test_lepton_predict_scores_a_folder_offline(champion, lepton_env, tmp_path):
    import pandas as pd

    from effects.monitoring.monitor import write_drift_batch
    from tests.conftest import run_cli

    batch = write_drift_batch("rotate", "none", tmp_path / "batch")["path"]
    out = tmp_path / "preds.parquet"
    r = run_cli(["predict", batch, "--out", str(out), "--no-progress"], lepton_env[1])
    assert r.returncode == 0, r.stderr[-2000:]
    df = pd.read_parquet(out)
    assert len(df) == 359 and {"label", "class_name", "confidence", "probabilities", "true_label"} <= set(df)
    acc = float((df["label"] == df["true_label"]).mean())
    assert f"accuracy {acc:.4f}" in r.stdout
    from effects.tracking.registry import load_alias
    from lepton_core.data.formats import load_raw

    mv, predictor = load_alias("lepton-digits", "champion")  # whichever version is champion now
    assert f"v{mv.version}" in r.stdout
    assert df["label"].tolist() == predictor.predict(load_raw("imagefolder", batch).x).labels.tolist()
    r = run_cli(["predict", str(tmp_path / "missing"), "--out", str(out)], lepton_env[1])
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "no such file" in r.stderr


def test_the_monitor_reads_the_servers_prediction_log_in_windows(champion, tmp_path):
    """Drifted traffic through the server lands in the default prediction log; the
    monitor flow with its default inbox checks it as one window and finds drift; a
    second run has nothing new to check."""
    from effects.runtime.settings import get_settings
    from flows.monitor import monitor
    from lepton_core.drift import simulate_drift
    from lepton_core.params import MonitorParams

    prepared = champion[1]
    x, y = simulate_drift(prepared.x["test"], prepared.y["test"], "rotate", 1.0, seed=0)
    folder = get_settings().prediction_log_dir
    with Running(tmp_path, ServeParams(log_flush_seconds=0.2), log_folder=folder) as srv:
        for i in range(0, len(x), 40):
            status, out = srv.predict(x[i : i + 40])
            assert status == 200
            # the true labels arrive later, by request id (class names or indices)
            labels = [str(v) for v in y[i : i + 40]] if i % 80 else [int(v) for v in y[i : i + 40]]
            st, ok = srv.request(
                "POST", "/v1/feedback", json.dumps({"request_id": out["request_id"], "labels": labels}).encode()
            )
            assert st == 200 and ok == {"accepted": len(labels)}
        bad = srv.request("POST", "/v1/feedback", json.dumps({"request_id": "x", "labels": ["cat"]}).encode())
        assert bad[0] == 400 and "class" in bad[1]["error"]
    params = MonitorParams(cooldown_minutes=600)
    r = monitor(monitor=params)
    windows = [res for res in r["results"] if Path(res["batch"]).name.startswith("predlog-")]
    assert len(windows) == 1, r["results"]
    assert windows[0]["status"] == "drift" and windows[0]["rows"] == len(x), windows[0]["verdict"]
    assert windows[0]["accepted_for_training"] is False  # the log is never folded into training data
    assert windows[0]["scores"]["accuracy_drop"] > 0.1  # from the feedback labels: rotated digits score worse
    again = monitor(monitor=params)
    assert not [res for res in again["results"] if Path(res["batch"]).name.startswith("predlog-")]


from tests.s3util import SeaweedS3  # noqa: E402 - shared with the S3 data-source tests


@pytest.mark.faults
def test_the_s3_prediction_log_survives_an_s3_outage_without_a_failed_prediction(champion, tmp_path, monkeypatch):
    """The log on an S3 prefix (as under `lepton up`); SeaweedFS killed mid-traffic:
    every prediction and feedback still answers 200, the parts wait in the local
    spool, and once S3 is back they all land there: nothing dropped, nothing lost,
    and the monitor reads the whole window from S3."""
    from dataclasses import replace

    import pandas as pd

    from effects.monitoring.monitor import prediction_log_window
    from effects.runtime.settings import get_settings
    from effects.serving.prediction_log import open_store

    s3 = SeaweedS3(tmp_path)
    s3.start()
    try:
        for k, v in {
            "LEPTON_S3_ENDPOINT_URL": s3.url,
            "AWS_ACCESS_KEY_ID": s3.key,
            "AWS_SECRET_ACCESS_KEY": s3.secret,
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(k, v)
        uri = "s3://lepton/serve/predictions"
        x = champion[1].x["test"]
        with Running(tmp_path, ServeParams(log_flush_seconds=0.2), log_folder=uri) as srv:
            log = srv.model.log

            def wait_for(cond, what):
                deadline = time.monotonic() + 60
                while not cond():
                    assert time.monotonic() < deadline, (what, log.written, log.spooled, log.dropped)
                    time.sleep(0.1)

            for i in range(10):
                assert srv.predict(x[i * 10 : i * 10 + 10])[0] == 200
            wait_for(lambda: log.written == 100, "written before the outage")

            s3.kill()  # the outage
            ids = []
            for i in range(10, 30):
                status, out = srv.predict(x[i * 10 : i * 10 + 10])
                assert status == 200, out
                ids.append(out["request_id"])
            st, ok = srv.request(
                "POST",
                "/v1/feedback",
                json.dumps({"request_id": ids[0], "labels": [int(v) for v in champion[1].y["test"][100:110]]}).encode(),
            )
            assert st == 200 and ok == {"accepted": 10}
            wait_for(lambda: log.spooled == 200, "spooled during the outage")
            m = _metrics(srv)
            assert m["lepton_prediction_log_spooled_rows{}"] == 200 and m["lepton_prediction_log_dropped_rows{}"] == 0

            s3.start()  # back: the spool drains into S3, oldest first
            wait_for(lambda: log.spooled == 0 and log.written == 300, "drained after the outage")
            m = _metrics(srv)
            assert m["lepton_prediction_log_written_rows{}"] == 300 and m["lepton_prediction_log_dropped_rows{}"] == 0
            assert m['lepton_requests_total{"code": "200"}'] == 31

        spool = get_settings().home / "serve" / "spool"
        assert not list(spool.rglob("*.parquet"))  # nothing left behind
        store = open_store(uri, get_settings())
        parts = store.list()
        assert sum(store.rows(n) for n in parts) == 300 and len(store.list("feedback")) == 1
        s = replace(get_settings(), prediction_log_uri=uri)
        window = prediction_log_window(s, min_rows=50)
        df = pd.concat([pd.read_parquet(p) for p in window.glob("*.parquet")])
        assert len(df) == 300 and df["request_id"].nunique() == 30 and set(ids) <= set(df["request_id"])
        assert prediction_log_window(s, min_rows=1) is None  # every part taken once
    finally:
        s3.kill() if s3.proc and s3.proc.poll() is None else None


def test_a_shadow_and_a_canary_on_live_traffic_with_feedback(champion, lepton_env, tmp_path):
    """A challenger (a retrain in promote.mode shadow) served beside the champion: as the
    shadow, it scores the same 300 requests the champion answers, clients post the true
    labels, and `lepton compare --live` reports both versions' accuracy on those same
    requests; as a canary at 0.2 it answers 20% ± 5% of 1,000 requests."""
    from flows.retrain import retrain
    from lepton_core.params import PromoteParams
    from tests.conftest import run_cli

    _, env = lepton_env
    x, y = champion[1].x["test"], champion[1].y["test"]
    # another seed: a version as good as the champion by the gate, kept as @challenger
    second = retrain(
        data=DataParams(),
        train=FAST.model_copy(update={"seed": 1}),
        promote=PromoteParams(mode="shadow", min_accuracy=0, tolerance=1),
        progress=False,
    )
    assert second["decision"]["challenger"] == second["version"], second["decision"]
    log = tmp_path / "predictions"
    n = min(300, len(x))
    with Running(tmp_path, ServeParams(shadow="challenger", log_flush_seconds=0.2), log_folder=log) as srv:
        champion_version = srv.request("GET", "/v1/model")[1]["version"]
        assert champion_version != second["version"]
        answers, ids = [], []
        for i in range(n):
            status, out = srv.predict(x[i][None])
            assert status == 200 and out["version"] == champion_version, out
            answers.append(out["labels"][0])
            ids.append(out["request_id"])
            body = json.dumps({"request_id": out["request_id"], "labels": [int(y[i])]}).encode()
            assert srv.request("POST", "/v1/feedback", body)[0] == 200
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _metrics(srv).get("lepton_shadow_instances_total{}", 0) < n:
            time.sleep(0.2)
        assert _metrics(srv)["lepton_shadow_instances_total{}"] == n
    r = run_cli(["compare", "--live", "@champion", "@challenger", "--json"], {**env, "LEPTON_PREDICTION_LOG": str(log)})
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["a"]["version"] == champion_version and out["b"]["version"] == second["version"]
    paired = out["paired"]
    assert paired["instances"] == n and paired["labelled"] == n  # the same requests, every one labelled
    assert paired["a"]["accuracy"] == pytest.approx(float(np.mean(np.array(answers) == y[:n])))
    import pandas as pd

    shadow = pd.concat([pd.read_parquet(f) for f in sorted((log / "shadow").glob("*.parquet"))])
    truth = dict(zip(ids, y[:n].tolist(), strict=True))
    assert len(shadow) == n and set(shadow["model_version"].astype(str)) == {second["version"]}
    shadow_right = np.mean(
        [int(p) == truth[r] for p, r in zip(shadow["prediction"], shadow["request_id"], strict=True)]
    )
    assert paired["b"]["accuracy"] == pytest.approx(float(shadow_right))
    assert paired["paired_test"]["test"] == "McNemar exact (two-sided)" and 0 <= paired["paired_test"]["p_value"] <= 1

    canary = {"alias": "challenger", "share": 0.2}
    with Running(tmp_path, ServeParams(canary=canary), log_folder=tmp_path / "canary-log") as srv:
        versions = [srv.predict(x[i % len(x)][None])[1]["version"] for i in range(1000)]
    share = versions.count(second["version"]) / len(versions)
    assert set(versions) == {champion_version, second["version"]}
    assert 0.15 <= share <= 0.25, share
