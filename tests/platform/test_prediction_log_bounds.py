"""The prediction log stays bounded and its feedback honest: feedback only for request
ids the server issued (signed, within the window, one label per instance), buffered
like predictions, the corrected label winning every time; sampling; hourly compaction
after the monitor has read the parts; retention, in a folder and under an S3 prefix,
with the monitor's windows still read. In-process, with the stand-in model of
test_serve_app (no registry)."""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from lepton_core.params import ServeParams
from tests.platform.test_serve_app import TOKEN, _Sums
from tests.s3util import SeaweedS3

IMAGE = [[1, 2], [3, 4]]
HOUR, DAY = 3600, 86400


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LEPTON_PROJECT_DIR", str(tmp_path))
    monkeypatch.setenv("LEPTON_HOME", str(tmp_path / "home"))
    for k in ("LEPTON_PREDICTION_LOG", "LEPTON_STATE_DB", "LEPTON_DB_URL"):
        monkeypatch.delenv(k, raising=False)
    return tmp_path


def _server(tmp_path: Path, token: str | None = None, **params):
    from effects.runtime.settings import get_settings
    from lepton.serving.core import Loaded
    from lepton.serving.server import ModelServer

    class Stand(ModelServer):
        def refresh(self) -> bool:
            self.current = Loaded("3", "run-3", "data-3", _Sums())
            return True

    p = ServeParams(**{"max_instances": 64, "poll_seconds": 60, **params})
    return Stand("m", "champion", p, get_settings(), token, tmp_path / "predictions")


def _client(server) -> TestClient:
    from lepton.serving.app import create_app

    return TestClient(create_app(server))


def _post(c: TestClient, path: str, body, headers: dict | None = None):
    return c.post(
        path, content=json.dumps(body).encode(), headers={"Content-Type": "application/json", **(headers or {})}
    )


def _predict(c: TestClient, instances: int = 1, headers: dict | None = None) -> str:
    r = _post(c, "/v1/predict", {"instances": [IMAGE] * instances}, headers)
    assert r.status_code == 200, r.text
    request_id: str = r.json()["request_id"]
    return request_id


def _feedback(c: TestClient, request_id: str, labels: list, headers: dict | None = None) -> tuple[int, dict]:
    r = _post(c, "/v1/feedback", {"request_id": request_id, "labels": labels}, headers)
    return r.status_code, r.json()


def _one_line(status_and_body: tuple[int, dict], status: int, words: str) -> None:
    got, body = status_and_body
    assert got == status and set(body) == {"error"}, (got, body)
    assert words in body["error"] and "\n" not in body["error"], body


# ---------------------------------------------------------------- request ids
def test_feedback_for_an_id_the_server_never_issued_is_refused(home, monkeypatch):
    other = home / "elsewhere"
    with _client(_server(home)) as c:
        real = _predict(c, 2)
        head, _, mac = real.rpartition(".")
        rand, issued, n, _ = real.split(".")
        forged = [
            "x",
            "0" * 32,  # an id of the old shape (uuid4 hex)
            f"{head}.{'0' * 24}",  # a made-up signature
            f"{head}.{mac[:-1]}{'0' if mac[-1] != '0' else '1'}",  # one digit off
            f"{rand}.{issued}.{int(n, 16) + 5:x}.{mac}",  # more instances claimed than the request had
            f"{'f' * 20}.{issued}.{n}.{mac}",  # another request's random part
        ]
        for rid in forged:
            _one_line(_feedback(c, rid, [0]), 404, "was not issued by this server")
        assert _feedback(c, real, ["a", "c"]) == (200, {"accepted": 2})
    # an id issued by another server (another home, so another key) is refused too
    monkeypatch.setenv("LEPTON_HOME", str(other / "home"))
    with _client(_server(other)) as c:
        foreign = _predict(c)
    monkeypatch.setenv("LEPTON_HOME", str(home / "home"))
    with _client(_server(home)) as c:
        _one_line(_feedback(c, foreign, [0]), 404, "was not issued by this server")
    fb = _stored(home)  # only the real request's labels were kept
    assert fb["request_id"].tolist() == [real, real] and fb["label"].tolist() == [0, 2]


def test_an_expired_id_and_more_labels_than_instances_are_refused(home):
    server = _server(home, feedback_window_hours=24)
    with _client(server) as c:
        stale = server.ids.issue(1, now=time.time() - 25 * HOUR)
        _one_line(_feedback(c, stale, [0]), 410, "past the feedback window of 24 h (serve.feedback_window_hours)")
        recent = server.ids.issue(1, now=time.time() - 23 * HOUR)
        assert _feedback(c, recent, [0]) == (200, {"accepted": 1})
        two = _predict(c, 2)
        _one_line(_feedback(c, two, [0, 1, 2]), 400, "3 labels for a request of 2 instances")
        assert _feedback(c, two, [0]) == (200, {"accepted": 1})  # fewer: the first instances
    assert len(_stored(home)) == 2


def test_a_restarted_server_and_its_sibling_workers_accept_the_ids_it_issued(home):
    """Without a token the key is a file of the home, 0600, made once; with a token it
    comes from the token, so every worker or replica sharing the token shares it."""
    from effects.serving.request_ids import key_file

    with _client(_server(home)) as c:
        rid = _predict(c)
    key = key_file(home / "home")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    with _client(_server(home)) as c, _client(_server(home)) as sibling:
        assert _feedback(c, rid, [1]) == (200, {"accepted": 1})
        assert _feedback(sibling, rid, [2]) == (200, {"accepted": 1})
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    with _client(_server(home, TOKEN)) as c:
        signed = _predict(c, 1, bearer)
        _one_line(_feedback(c, rid, [0], bearer), 404, "not issued")  # issued under the other key
    key.unlink()  # the token's key does not depend on the file
    with _client(_server(home, TOKEN)) as c:
        assert _feedback(c, signed, [0], bearer) == (200, {"accepted": 1})
        _one_line(_feedback(c, signed, [0]), 401, "bearer token")  # still behind the token


def test_a_feedback_body_over_its_cap_is_refused(home):
    """Room for serve.max_instances labels of a KiB each (here 64 + 64 KiB), not serve.max_body_mb:
    refused from the Content-Length, or once a chunked body passes it."""
    from lepton.serving.routes import feedback_cap_mb

    server = _server(home)
    assert feedback_cap_mb(server.params) == 0.125 < server.params.max_body_mb
    with _client(server) as c:
        rid = _predict(c)
        big = json.dumps({"request_id": rid, "labels": ["a" * 10_000] * 20}).encode()
        r = c.post("/v1/feedback", content=big, headers={"Content-Type": "application/json"})
        _one_line((r.status_code, r.json()), 413, "over the 0.125 MB cap")
        r = c.post("/v1/feedback", content=iter([big[:100_000], big[100_000:]]))  # chunked: no length
        _one_line((r.status_code, r.json()), 413, "over the 0.125 MB cap")
        assert _feedback(c, rid, ["b"]) == (200, {"accepted": 1})


# ---------------------------------------------------------------- buffered feedback
def _stored(home: Path) -> pd.DataFrame:
    from effects.serving.prediction_log import read_feedback

    fb = read_feedback(home / "predictions" / "feedback")
    return fb if fb is not None else pd.DataFrame()


def test_5000_feedback_posts_make_a_bounded_number_of_files(home):
    server = _server(home, log_flush_seconds=1.0, log_flush_rows=1_000_000)  # by time alone
    with _client(server) as c:
        ids = [_predict(c, 2) for _ in range(100)]
        t0 = time.monotonic()
        for i in range(5000):
            assert _feedback(c, ids[i % 100], [i % 3, (i + 1) % 3]) == (200, {"accepted": 2})
        elapsed = time.monotonic() - t0
    parts = list((home / "predictions" / "feedback").glob("*.parquet"))
    # a part a second at most (and one at shutdown), whatever the number of posts
    assert 1 <= len(parts) <= elapsed / 1.0 + 2, (len(parts), elapsed)
    assert sum(len(pd.read_parquet(p)) for p in parts) == 10_000
    fb = _stored(home)
    assert len(fb) == 200  # one label per (request, instance): the last posted
    last = {ids[i % 100]: [i % 3, (i + 1) % 3] for i in range(5000)}
    for rid, labels in last.items():
        assert fb.loc[fb["request_id"] == rid].sort_values("instance")["label"].tolist() == labels


def test_a_corrected_label_wins_every_time(home):
    """Each label its own part (flush_rows=1): parts written within one second sort by a
    random suffix, which once decided the winner 11 times in 20. Now the later label wins
    all 20 times, in the stored feedback and in the monitor's join, and a correction
    after a restart wins too."""
    from effects.monitoring.monitor import _with_feedback

    with _client(_server(home, log_flush_rows=1)) as c:
        ids = [_predict(c) for _ in range(20)]
        for rid in ids:
            assert _feedback(c, rid, ["a"]) == (200, {"accepted": 1})
            assert _feedback(c, rid, ["c"]) == (200, {"accepted": 1})
    assert len(list((home / "predictions" / "feedback").glob("*.parquet"))) >= 20
    fb = _stored(home)
    assert fb.set_index("request_id").loc[ids, "label"].tolist() == [2] * 20
    logged = pd.concat([pd.read_parquet(p) for p in (home / "predictions").glob("*.parquet")])
    joined = _with_feedback(logged, home / "predictions" / "feedback")
    assert joined.set_index("request_id").loc[ids, "label"].tolist() == [2] * 20
    with _client(_server(home)) as c:  # a restart: the correction is received later still
        assert _feedback(c, ids[0], ["b"]) == (200, {"accepted": 1})
    assert _stored(home).set_index("request_id").loc[ids, "label"].tolist() == [1] + [2] * 19


# ---------------------------------------------------------------- sampling
def test_sampling_logs_about_the_share_and_feedback_joins_those_logged(home):
    from effects.monitoring.monitor import _with_feedback
    from effects.serving.prediction_log import sampled

    ids = [os.urandom(10).hex() for _ in range(20_000)]
    share = np.mean([sampled(rid, 5, 0.1).mean() for rid in ids])
    assert abs(share - 0.1) < 0.005, share
    assert sampled(ids[0], 7, 1.0).all() and sampled(ids[0], 7, 0.3).tolist() == sampled(ids[0], 7, 0.3).tolist()

    server = _server(home, log_sample_rate=0.25)
    with _client(server) as c:
        rids = [_predict(c, 10) for _ in range(200)]
        for rid in rids:
            assert _feedback(c, rid, ["b"] * 10) == (200, {"accepted": 10})
    logged = pd.concat([pd.read_parquet(p) for p in (home / "predictions").glob("*.parquet")])
    assert abs(len(logged) / 2000 - 0.25) < 0.03, len(logged)
    assert server.log.unsampled == 2000 - len(logged)
    fb = _stored(home)
    key = ["request_id", "instance"]
    assert set(map(tuple, fb[key].to_numpy())) == set(map(tuple, logged[key].to_numpy()))
    joined = _with_feedback(logged, home / "predictions" / "feedback")
    assert (joined["label"] == 1).all()


# ---------------------------------------------------------------- compaction and retention
FEATURES = ["f_a", "f_b"]


def _part(at: float, rows: int, rng) -> tuple[str, bytes, pd.DataFrame]:
    """A prediction-log part written at `at` (epoch s), as the server names and fills it."""
    import io

    from effects.serving.prediction_log import part_name

    df = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(np.full(rows, at - 1), unit="s", utc=True),
            "model_version": "3",
            "request_id": [os.urandom(10).hex() for _ in range(rows)],
            "instance": np.zeros(rows, dtype=np.int64),
            "f_a": rng.normal(size=rows),
            "f_b": rng.normal(size=rows),
            "prediction": rng.integers(0, 3, rows),
            "confidence": rng.uniform(0.4, 1.0, rows),
        }
    )
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return part_name(rows, at), buf.getvalue(), df


def _feedback_part(at: float, df: pd.DataFrame) -> tuple[str, bytes]:
    import io

    from effects.serving.prediction_log import part_name

    fb = pd.DataFrame(
        {
            "request_id": df["request_id"],
            "instance": df["instance"],
            "label": df["prediction"].astype(np.int64),
            "received": np.int64(at * 1e9),
        }
    )
    buf = io.BytesIO()
    fb.to_parquet(buf, index=False)
    return "feedback/" + part_name(len(fb), at), buf.getvalue()


def _hours(store, start: float, end: float, rng) -> dict[str, pd.DataFrame]:
    """Three parts an hour (and a feedback part with their true labels) from `start` to `end`."""
    written = {}
    t = start
    while t < end:
        for k in range(3):
            name, data, df = _part(t + k * 600, 20, rng)
            store.put(name, data)
            written[name] = df
        fname, fdata = _feedback_part(t + 1500, pd.concat([written[n] for n in list(written)[-3:]]))
        store.put(fname, fdata)
        t += HOUR
    return written


def _a_quarter_to() -> float:
    """A quarter to the hour, the last one past: the fresh parts of `_week_then_retention`
    (written from half an hour before) fall in an hour not finished yet, whatever the clock."""
    t = time.time()
    return t - t % HOUR - 15 * 60


def _stub_predictor():
    return SimpleNamespace(preprocessing=SimpleNamespace(regression=False))


def _week_then_retention(store, s, now: float) -> None:
    """A week of logs; the monitor reads them as they come (two windows); retention of
    a day and compaction; then the monitor reads the next window over the compacted log."""
    import io

    from effects.monitoring.monitor import current_frame, prediction_log_window
    from effects.serving.log_upkeep import name_time, newest_row_time, upkeep
    from effects.serving.prediction_log import feedback_folder

    rng = np.random.default_rng(0)
    week = _hours(store, now - 7 * DAY, now - 3 * DAY, rng)
    first = prediction_log_window(s, min_rows=1)  # the monitor, three days ago
    assert first is not None and len(list(first.glob("*.parquet"))) == len(week)
    later = _hours(store, now - 3 * DAY, now - 2 * HOUR, rng)
    second = prediction_log_window(s, min_rows=1)  # the monitor, two hours ago
    assert second is not None and len(list(second.glob("*.parquet"))) == len(later)
    fresh = {}
    for k in range(4):  # written since: not read yet
        name, data, df = _part(now - 1800 + k * 60, 25, rng)
        store.put(name, data)
        fresh[name] = df
    fb_name, fb_data = _feedback_part(now - 60, pd.concat(fresh.values()))
    store.put(fb_name, fb_data)
    before = len(store.list()) + len(store.list("feedback"))
    assert before > 600

    done = upkeep(store, s, retention_days=1, now=now)
    assert done["expired"] > 0 and done["compacted"] > 0, done
    names, feedback = store.list(), store.list("feedback")
    # only a day remains: nothing whose rows are older than the cut-off
    cutoff = now - DAY
    assert [n for n in names + feedback if (newest_row_time(n) or 0) < cutoff] == []
    hourly = [n for n in names if "-hour-" in n]
    assert 20 <= len(hourly) <= 25 and set(fresh) <= set(names)  # an hour a file; the unread parts kept
    lone = [n for n in names if n not in hourly and n not in fresh]  # a read part alone in its hour: left as is
    assert all(sum(m[:11] == n[:11] for m in names) == 1 for n in lone) and len(lone) <= 2, lone
    assert len(feedback) <= 26, feedback
    # the hourly files (and a lone part) hold exactly the rows of the day's parts: none lost, none twice
    rows = pd.concat([pd.read_parquet(io.BytesIO(store.read(n))) for n in hourly + lone], ignore_index=True)
    day = pd.concat([df for n, df in later.items() if (name_time(n) or 0) >= cutoff], ignore_index=True)
    assert len(rows) == len(day) and set(rows["request_id"]) == set(day["request_id"])
    assert not first.exists() and second.exists()  # the monitor's copy of a days-old window went too

    # the monitor's next window: only the unread parts, none of the compacted hours
    window = prediction_log_window(s, min_rows=1)
    assert window is not None and sorted(p.name for p in window.glob("*.parquet")) == sorted(fresh)
    frame = current_frame(window, "predlog", _stub_predictor(), feedback_folder(s))
    assert len(frame) == 100 and (frame["label"] == frame["prediction"]).all()  # feedback joined
    assert prediction_log_window(s, min_rows=1) is None
    again = upkeep(store, s, retention_days=1, now=now)  # nothing left to do
    assert again == {"expired": 0, "compacted": 0} and sorted(store.list()) == sorted(names)
    # the window just read is of an hour not finished yet: merged once it is
    assert upkeep(store, s, retention_days=1, now=now + HOUR)["compacted"] == len(fresh) - 1
    assert set(fresh).isdisjoint(store.list()) and prediction_log_window(s, min_rows=1) is None


def test_a_week_of_logs_with_a_retention_of_a_day_keeps_a_day_and_the_monitor_reads_on(home):
    from effects.runtime.settings import get_settings
    from effects.serving.prediction_log import LocalStore

    folder = home / "log"
    s = replace(get_settings(), prediction_log_uri=str(folder))
    _week_then_retention(LocalStore(folder), s, _a_quarter_to())


@pytest.fixture
def s3(tmp_path):
    server = SeaweedS3(tmp_path / "s3")
    server.start()
    try:
        yield server
    finally:
        server.kill()


def test_retention_and_compaction_under_an_s3_prefix(home, s3, monkeypatch):
    from effects.runtime.settings import get_settings
    from effects.serving.prediction_log import S3Store

    for k, v in {
        "LEPTON_S3_ENDPOINT_URL": s3.url,
        "AWS_ACCESS_KEY_ID": s3.key,
        "AWS_SECRET_ACCESS_KEY": s3.secret,
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    uri = "s3://lepton/serve/predictions"
    s = replace(get_settings(), prediction_log_uri=uri)
    _week_then_retention(S3Store(uri, s), s, _a_quarter_to())
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket="lepton", Prefix="serve/")["Contents"]]
    assert len(keys) < 60  # a day of hourly files and the unread parts; a week was over 700
    cache = home / "home" / "monitor" / "feedback"  # the monitor's copy follows the prefix
    assert sorted(p.name for p in cache.glob("*.parquet")) == sorted(S3Store(uri, s).list("feedback"))


def test_a_compaction_cut_short_leaves_no_row_twice(home, monkeypatch):
    from effects.monitoring.monitor import prediction_log_window
    from effects.runtime.settings import get_settings
    from effects.serving import log_upkeep
    from effects.serving.prediction_log import LocalStore

    folder = home / "log"
    s = replace(get_settings(), prediction_log_uri=str(folder))
    store = LocalStore(folder)
    rng = np.random.default_rng(1)
    now = time.time()
    hour = now - now % HOUR - 3 * HOUR
    for k in range(4):
        name, data, _ = _part(hour + k * 300, 10, rng)
        store.put(name, data)
    assert prediction_log_window(s, min_rows=1) is not None

    def crash(rels):
        raise OSError("the process died before deleting")

    monkeypatch.setattr(store, "delete", crash)
    with pytest.raises(OSError):
        log_upkeep.compact(store, s, now)
    monkeypatch.undo()
    assert len(store.list()) == 5  # the hour's file beside its four parts
    assert prediction_log_window(s, min_rows=1) is None  # no window takes the hour's file
    log_upkeep.compact(store, s, now)
    (only,) = store.list()
    df = pd.read_parquet(folder / only)
    assert len(df) == 40 and df["request_id"].is_unique


def test_the_server_keeps_its_log_bounded_on_its_own(home):
    """The server's upkeep thread: a part past the retention goes at start."""
    from effects.serving.prediction_log import LocalStore, part_name

    rng = np.random.default_rng(2)
    store = LocalStore(home / "predictions")
    name, data, _ = _part(time.time() - 3 * DAY, 5, rng)
    store.put(name, data)
    store.put("feedback/" + part_name(1, time.time() - 3 * DAY), data)
    with _client(_server(home, log_retention_days=2)) as c:
        _predict(c)
        deadline = time.monotonic() + 20
        while store.list() and name in store.list() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert name not in store.list() and not store.list("feedback")


@pytest.mark.parametrize("rate", [1.0, 0.5])
def test_a_batchs_requests_logged_at_once_are_the_rows_each_logged_alone(tmp_path, rate):
    """The server logs a forward pass's requests as one entry (`add_many`): the rows, their
    request ids and instance indices, sampled or not, are those of each request logged
    by itself (`add`)."""
    from effects.serving.prediction_log import LocalStore, PredictionLog

    rng = np.random.default_rng(0)
    requests = [(n, rng.bytes(10).hex()) for n in (3, 1, 5, 2)]  # fixed ids: a fixed sample
    x = rng.uniform(size=(11, 1, 2, 2)).astype(np.float32)
    logits = rng.normal(size=(11, 3)).astype(np.float32)
    one, many = (PredictionLog(LocalStore(tmp_path / d), sample_rate=rate) for d in ("one", "many"))
    start = 0
    for n, rid in requests:
        one.add("3", rid, x[start : start + n], logits[start : start + n], "image", [])
        start += n
    many.add_many("3", requests, x, logits, "image", [])
    one.close()
    many.close()

    def rows(d: str) -> pd.DataFrame:
        df = pd.concat([pd.read_parquet(p) for p in (tmp_path / d).glob("*.parquet")]).drop(columns="timestamp")
        return df.sort_values(["request_id", "instance"]).reset_index(drop=True)

    a, b = rows("one"), rows("many")
    pd.testing.assert_frame_equal(a, b)
    assert (len(a) == 11) if rate == 1 else (0 < len(a) < 11)
    assert one.unsampled == many.unsampled == 11 - len(a)
    if rate == 1:
        assert a.groupby("request_id")["instance"].apply(list).to_dict() == {rid: list(range(n)) for n, rid in requests}
    assert many.files == 1  # one part for the four requests


def test_a_log_without_features_keeps_the_answers_a_comparison_pairs(tmp_path):
    """A shadow's log (`features=False`): each row's request id, instance and answer (a
    classifier's prediction and confidence, a regression model's value), no features."""
    from effects.serving.prediction_log import LocalStore, PredictionLog

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(5, 1, 2, 2)).astype(np.float32)
    logits = rng.normal(size=(5, 3)).astype(np.float32)
    log = PredictionLog(LocalStore(tmp_path / "cls"), features=False)
    log.add_many("4", [(2, "a"), (3, "b")], x, logits, "image", [])
    log.close()
    df = pd.read_parquet(next((tmp_path / "cls").glob("*.parquet")))
    assert list(df.columns) == ["timestamp", "model_version", "request_id", "instance", "prediction", "confidence"]
    assert df["prediction"].tolist() == logits.argmax(1).tolist() and df["instance"].tolist() == [0, 1, 0, 1, 2]
    assert df["request_id"].tolist() == ["a", "a", "b", "b", "b"] and set(df["model_version"]) == {"4"}
    values = rng.normal(size=5)
    log = PredictionLog(LocalStore(tmp_path / "reg"), features=False)
    log.add_many("4", [(5, "c")], x.reshape(5, -1), logits[:, :1], "tabular", ["a", "b", "c", "d"], values)
    log.close()
    df = pd.read_parquet(next((tmp_path / "reg").glob("*.parquet")))
    assert list(df.columns) == ["timestamp", "model_version", "request_id", "instance", "value"]
    np.testing.assert_allclose(df["value"], values)
    assert df["request_id"].tolist() == ["c"] * 5 and df["instance"].tolist() == list(range(5))
    # sampled as the main log samples (a shadow's log takes serve.log_sample_rate): the same instances
    from effects.serving.prediction_log import sampled

    ids = [(3, rng.bytes(8).hex()) for _ in range(40)]
    x, logits = rng.uniform(size=(120, 1, 2, 2)).astype(np.float32), rng.normal(size=(120, 3)).astype(np.float32)
    log = PredictionLog(LocalStore(tmp_path / "half"), sample_rate=0.5, features=False)
    log.add_many("4", ids, x, logits, "image", [])
    log.close()
    df = pd.read_parquet(next((tmp_path / "half").glob("*.parquet")))
    want = {(rid, int(i)) for n, rid in ids for i in np.flatnonzero(sampled(rid, n, 0.5))}
    assert set(zip(df["request_id"], df["instance"].astype(int), strict=True)) == want and 0 < len(want) < 120


def test_a_part_of_two_layouts_holds_every_column_with_the_types_the_readers_expect(tmp_path):
    """One part with the rows of two versions whose columns differ (a classifier's image
    features, then a regression model's table features, as after a swap): every column,
    null where a version has none; the UTC timestamps of when they were added, the ids
    as strings, the instances as int64 (the part is built as Arrow arrays, not through a
    DataFrame, and must read back as the frames the monitor and `compare --live` read)."""
    from effects.serving.prediction_log import LocalStore, PredictionLog

    rng = np.random.default_rng(1)
    log = PredictionLog(LocalStore(tmp_path / "mixed"), flush_seconds=3600, flush_rows=10**6)
    t0 = pd.Timestamp.now(tz="UTC")
    x, logits = rng.uniform(size=(3, 1, 2, 2)).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32)
    log.add_many("1", [(2, "a"), (1, "b")], x, logits, "image", [])
    values = rng.normal(size=2)
    log.add_many("2", [(2, "c")], rng.normal(size=(2, 3)), rng.normal(size=(2, 1)), "tabular", ["u", "v", "w"], values)
    log.close()
    t1 = pd.Timestamp.now(tz="UTC")
    (part,) = (tmp_path / "mixed").glob("*.parquet")
    df = pd.read_parquet(part)
    assert list(df.columns[:4]) == ["timestamp", "model_version", "request_id", "instance"]
    assert {"prediction", "confidence", "f_u", "value"} <= set(df.columns)
    assert str(df["timestamp"].dtype) == "datetime64[ns, UTC]" and df["timestamp"].between(t0, t1).all()
    assert df["instance"].dtype == np.int64 and df["instance"].tolist() == [0, 1, 0, 0, 1]
    assert df["request_id"].tolist() == ["a", "a", "b", "c", "c"] and df["model_version"].tolist() == list("11122")
    assert df["prediction"].iloc[:3].tolist() == logits.argmax(1).tolist() and df["prediction"].iloc[3:].isna().all()
    np.testing.assert_allclose(df["value"].iloc[3:], values)
    assert df["value"].iloc[:3].isna().all() and df["f_u"].iloc[:3].isna().all()


def test_request_ids_from_the_random_pool_are_unique_and_checkable():
    from effects.serving.request_ids import RequestIds

    ids = RequestIds(b"k" * 32, 24)
    issued = [ids.issue(2) for _ in range(2000)]  # past the pool's 512: refilled
    assert len(set(issued)) == 2000 and len({i[:20] for i in issued}) == 2000
    assert all(ids.check(i, 2) == 2 for i in issued[::97])


def test_the_writers_queue_is_bounded_in_rows_and_wakes_it_only_when_rows_pile_up():
    """Rows wait for the log's thread in a queue bounded in rows (a pass of many requests
    is one entry): beyond the bound a put is refused (the log counts the rows dropped).
    A put wakes the writer only once `wake_rows` rows wait, or to stop."""
    import queue

    from effects.serving.prediction_log import _Inbox

    inbox = _Inbox(max_rows=10, wake_rows=6)
    first, second, third = object(), object(), object()
    inbox.put_nowait(first, 4)
    assert not inbox._wake.is_set()  # 4 rows: no wake-up
    inbox.put_nowait(second, 4)
    assert inbox._wake.is_set()  # 8 rows: the writer is woken
    with pytest.raises(queue.Full):
        inbox.put_nowait(third, 4)  # 12 rows would pass the bound
    assert inbox.take(0) == [first, second]
    inbox.put_nowait(third, 40)  # an empty queue takes one entry of any size
    inbox.put_nowait(None)  # close: always queued, always wakes
    assert inbox._wake.is_set() and inbox.take(0) == [third, None]
