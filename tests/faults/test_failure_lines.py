"""The one line an infrastructure failure ends in (lepton/failures.py): it names what
failed and what to do, holds no newline, and the traceback goes to the log file."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import pytest

from effects.runtime.settings import Settings
from lepton import failures

pytestmark = pytest.mark.faults


def settings(tmp_path: Path) -> Settings:
    return Settings(
        project_dir=tmp_path,
        home=tmp_path / "home",
        tracking_uri="http://user:secret@127.0.0.1:9",
        artifact_root=str(tmp_path / "a"),
        dvc_remote="s3://lepton/dvc",
        prefect_home=tmp_path / "p",
        s3_endpoint_url="http://127.0.0.1:8",
        prefect_api_url="http://127.0.0.1:7/api",
    )


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as e:  # noqa: BLE001  (a real traceback on it)
        return e


def mlflow_down():
    from mlflow.exceptions import MlflowException

    return MlflowException(
        "API request to http://127.0.0.1:9/api/2.0/mlflow/registered-models/get failed with "
        "exception HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded\nwith url"
    )


def s3_down():
    from botocore.exceptions import EndpointConnectionError

    return EndpointConnectionError(endpoint_url="http://127.0.0.1:8/lepton")


def prefect_down():
    import httpx

    return httpx.ConnectError("[Errno 111] Connection refused")


def dvc_push_failed():
    from dvc.exceptions import UploadError

    return UploadError(3)


CASES = {
    "mlflow": (
        mlflow_down,
        [
            "the MLflow tracking server at http://user:***@127.0.0.1:9 does not answer",
            "start it or fix MLFLOW_TRACKING_URI",
        ],
    ),
    "s3": (s3_down, ["S3 at http://127.0.0.1:8 failed", "credentials"]),
    "prefect": (prefect_down, ["the Prefect API at http://127.0.0.1:7/api does not answer", "PREFECT_API_URL"]),
    "dvc": (
        dvc_push_failed,
        ["the DVC remote s3://lepton/dvc failed: 3 files failed to upload", "exists, is reachable and is writable"],
    ),
    "disk-full": (
        lambda: OSError(errno.ENOSPC, "No space left on device", "/data/x.npy"),
        ["no space left on the device writing /data/x.npy", "free some space"],
    ),
    "other": (lambda: RuntimeError("boom\nsecond line"), ["RuntimeError: boom second line"]),
    # found by the command's quick check before its work (lepton/cli/services.py)
    "mlflow-silent": (
        lambda: failures.ServiceUnreachable("mlflow", "http://user:secret@127.0.0.1:9", "no answer within 3 s"),
        [
            "the MLflow tracking server at http://user:***@127.0.0.1:9 does not answer: no answer within 3 s",
            "start it or fix MLFLOW_TRACKING_URI",
        ],
    ),
    "prefect-refused": (
        lambda: failures.ServiceUnreachable("prefect", "http://127.0.0.1:7/api", "connection refused"),
        [
            "the Prefect API at http://127.0.0.1:7/api does not answer: connection refused",
            "start it or fix PREFECT_API_URL",
        ],
    ),
    "s3-refused": (
        lambda: failures.ServiceUnreachable("s3", "http://127.0.0.1:8", "connection refused"),
        ["S3 at http://127.0.0.1:8 does not answer: connection refused", "start it or fix LEPTON_S3_ENDPOINT_URL"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_line_names_what_failed_and_what_to_do(tmp_path, case):
    make, needles = CASES[case]
    s = settings(tmp_path)
    line = failures.error_line(raised(make()), s, debug=False)
    assert line.startswith("error: ") and "\n" not in line, line
    for n in needles:
        assert n in line, line
    assert "secret" not in line
    log = tmp_path / "home" / "logs" / "lepton.log"
    assert line.endswith(f"(traceback in {log})")
    assert "Traceback (most recent call last)" in log.read_text()


@pytest.fixture(autouse=True)
def _fresh_handler():
    """error_line opens one log handler per process: give each case its own."""
    yield
    h = failures._file_handler
    if h is not None:
        logging.getLogger("lepton.failures").removeHandler(h)
        h.close()
    failures._file_handler = None


def raised_in(filename: str, exc: BaseException) -> BaseException:
    """`exc` raised by code whose frame says it is in `filename` (as in the installed tree)."""
    code = compile("def adapter(e):\n    raise e\n", filename, "exec")
    scope: dict = {}
    exec(code, scope)
    try:
        scope["adapter"](exc)
    except BaseException as e:  # noqa: BLE001
        return e
    raise AssertionError("not raised")


@pytest.mark.parametrize(
    "filename, exc, needle",
    [
        # an OSError of the DVC adapter is the remote's failure, not a bare path
        (
            "/srv/app/effects/data/dvc_store.py",
            NotADirectoryError(20, "Not a directory", "/r/files/md5/8c/x"),
            "the DVC remote s3://lepton/dvc failed: [Errno 20] Not a directory",
        ),
        # a connection error inside the MLflow adapter names the tracking server
        (
            "/srv/lepton/effects/tracking/runs.py",
            ConnectionError("Connection refused"),
            "the MLflow tracking server at http://user:***@127.0.0.1:9 does not answer: Connection refused",
        ),
        # an installed tree (pip install ., as in the images) is ours too; a third party's
        # folder that happens to be called `tasks` is not
        (
            "/venv/lib/python3.11/site-packages/effects/tracking/registry.py",
            ValueError("odd"),
            "the MLflow tracking server at http://user:***@127.0.0.1:9 failed: odd",
        ),
        ("/venv/lib/python3.11/site-packages/celery/tasks/effects.py", ValueError("odd"), "error: ValueError: odd"),
    ],
)
def test_the_adapter_a_failure_came_through_is_named(tmp_path, filename, exc, needle):
    line = failures.error_line(raised_in(filename, exc), settings(tmp_path), debug=False)
    assert needle in line, line


def test_with_lepton_debug_the_line_does_not_send_you_to_the_log(tmp_path):
    line = failures.error_line(raised(s3_down()), settings(tmp_path), debug=True)
    assert line.startswith("error: S3 at http://127.0.0.1:8 failed") and "traceback in" not in line
    assert "Traceback" in (tmp_path / "home" / "logs" / "lepton.log").read_text()  # logged all the same
