"""Every line the `lepton` command prints for a person (lepton/cli/render.py), from
hand-made dicts: no stack, no services, no subprocess. Users and scripts read these
lines, so each is pinned exactly."""

from __future__ import annotations

import calendar
import shlex
import subprocess

from lepton.cli import render

STATUS = {
    "registered_model": "lepton-digits",
    "tracking_uri": "sqlite:////tmp/h/mlflow.db",
    "champion": {
        "version": "3",
        "run_id": "r3",
        "data_version": "0123456789abcdef0123",
        "metrics": {"f1_macro": 0.95, "accuracy": 0.96},
    },
    "previous": None,
}
RESULT = {
    "version": "4",
    "run_id": "r4",
    "data_version": "d4",
    "decision": {"promoted": False, "reason": "not better than v3"},
    "metrics": {"test_accuracy": 0.9512345, "test_f1_macro": 0.94},
}


def test_retrain_summary_with_and_without_a_champion():
    assert render.retrain_summary(RESULT, STATUS, "local sqlite /tmp/h/mlflow.db") == [
        "",
        "model version   lepton-digits v4: registered, not promoted",
        "gate            not better than v3",
        "champion        v3  test accuracy 0.9600  macro-F1 0.9500",
        "this run        test accuracy 0.9512  macro-F1 0.9400",
        "data version    d4",
        "MLflow run      r4",
        "registry        local sqlite /tmp/h/mlflow.db",
    ]
    first = {**RESULT, "decision": {"promoted": True, "reason": "no champion yet"}}
    lines = render.retrain_summary(first, {**STATUS, "champion": None}, "http://127.0.0.1:5000 (lepton up)")
    assert lines[1] == "model version   lepton-digits v4: promoted to @champion"
    assert not any(ln.startswith("champion") for ln in lines)
    # a champion whose run lacks a metric: nan, not a crash
    odd = {**STATUS, "champion": {**STATUS["champion"], "metrics": {}}}
    assert "champion        v3  test accuracy nan  macro-F1 nan" in render.retrain_summary(RESULT, odd, "x")


def test_browse_points_at_mlflow_ui_for_sqlite_and_at_the_run_for_a_server():
    assert render.browse("sqlite:////h/mlflow.db", None, "http://127.0.0.1:5000/#/r") == [
        "browse          mlflow ui --backend-store-uri sqlite:////h/mlflow.db",
        "                then http://127.0.0.1:5000/#/r",
    ]
    assert render.browse("sqlite:////h/mlflow.db", None) == [
        "browse          mlflow ui --backend-store-uri sqlite:////h/mlflow.db"
    ]
    assert render.browse("http://m:5000", "http://m:5000/#/run", "unused") == ["browse          http://m:5000/#/run"]
    assert render.browse("databricks", None) == ["browse          databricks"]


SWEEP = {
    "trials": [
        {"number": 0, "value": 0.91, "values": {"lr": 0.0031234, "width": 32}},
        {"number": 1, "value": None, "values": {"lr": 0.1, "width": 8}},
        {"number": 2, "value": 0.93, "values": {"lr": 0.001, "width": 64}},
    ],
    "failed": 1,
    "runner": "threads",
    "parent_run_id": "p1",
    "metric": "val_accuracy",
    "best": {"number": 2, "run_id": "t2"},
    "version": "5",
    "decision": {"promoted": True, "reason": "better"},
    "metrics": {"test_accuracy": 0.9355},
}


def test_sweep_summary_marks_the_best_trial():
    result = dict(SWEEP)
    assert render.sweep_summary(result, "lepton-digits") == [
        "",
        "sweep           3 trials (1 failed) on threads; parent MLflow run p1",
        "    trial 0   val_accuracy 0.9100      lr=0.003123  width=32",
        "    trial 1   failed                   lr=0.1  width=8",
        "  * trial 2   val_accuracy 0.9300      lr=0.001  width=64",
        "model version   lepton-digits v5 (trial 2): promoted to @champion",
        "gate            better",
        "best trial      test accuracy 0.9355  run t2",
    ]


def test_services_table_says_healthy_not_healthy_or_down():
    services = {
        "seaweedfs": {"url": "http://127.0.0.1:8333", "running": True, "healthy": True},
        "mlflow": {"url": "http://127.0.0.1:5000", "running": True, "healthy": False},
        "worker": {"url": "pool lepton", "running": False, "healthy": False},
    }
    assert render.services_table(services) == [
        "seaweedfs         healthy                http://127.0.0.1:8333",
        "mlflow            running, not healthy   http://127.0.0.1:5000",
        "worker            down                   pool lepton",
    ]
    assert render.services_table({}) == []


def test_registry_table_lists_both_aliases_with_sorted_metrics():
    assert render.registry_table(STATUS, "local sqlite /tmp/h/mlflow.db") == [
        "registered model  lepton-digits",
        "registry          local sqlite /tmp/h/mlflow.db",
        "@champion         v3  accuracy 0.9600, f1_macro 0.9500  data 0123456789ab  run r3",
        "@previous         none",
    ]


def test_promote_and_rollback_lines():
    assert render.promote_line({"version": "2", "promoted": True, "reason": "better"}) == "v2 promoted: better"
    assert render.promote_line({"version": "2", "promoted": False, "reason": "worse"}) == "v2 not promoted: worse"
    assert render.rollback_line({"champion": "1", "demoted": "2"}) == "@champion is v1 again (v2 demoted)"


URLS = {
    "prefect": "http://127.0.0.1:4200",
    "prefect_api": "http://127.0.0.1:4200/api",
    "mlflow": "http://127.0.0.1:5000",
    "s3": "http://127.0.0.1:8333",
    "serve": "http://127.0.0.1:8000",
}


def test_up_summary_with_auth_and_sqlite_and_without_auth_on_postgres():
    state = {"bucket": "lepton", "pool": "lepton", "sse": "AES256", "auth": True, "db_url": None}
    assert render.up_summary(state, URLS, "/h/stack", "") == [
        "Prefect dashboard  http://127.0.0.1:4200",
        "MLflow UI          http://127.0.0.1:5000",
        "S3 (SeaweedFS)     http://127.0.0.1:8333  bucket lepton",
        "model server       http://127.0.0.1:8000  (@champion; bearer token in /h/stack/credentials.json)",
        "work pool          lepton",
        "S3 encryption      AES256",
        "authentication     on (credentials in /h/stack/credentials.json)",
        "SeaweedFS inside   mutual TLS (certificates in /h/stack/tls)",
        "backend            SQLite under /h/stack",
        "every lepton command now uses this stack; `lepton deploy` registers the deployments",
    ]
    open_pg = render.up_summary({**state, "auth": False, "sse": None}, URLS, "/h/stack", "postgresql://u:***@h/x")
    assert "S3 encryption      none requested" in open_pg
    assert "authentication     off (--no-auth)" in open_pg
    assert not any(line.startswith("SeaweedFS inside") for line in open_pg)
    assert "backend            postgresql://u:***@h/x" in open_pg


def test_up_summary_names_the_watchers_or_says_they_are_not_installed():
    state = {"bucket": "lepton", "pool": "lepton", "sse": None, "auth": True, "db_url": None}
    watch = {"ports": {"prometheus": 9090, "alertmanager": 9093, "evidently": 8085}}
    lines = render.up_summary(
        {**state, "watch": {**watch, "pids": {"prometheus": 0, "alertmanager": 0, "evidently": 7}}},
        URLS,
        "/h/stack",
        "",
    )
    i = lines.index("model server       http://127.0.0.1:8000  (@champion; bearer token in /h/stack/credentials.json)")
    assert lines[i + 1 : i + 4] == [
        "Prometheus         not installed (apt-get install prometheus); the stack works without it",
        "Alertmanager       not installed (apt-get install prometheus-alertmanager); the stack works without it",
        "Evidently UI       http://127.0.0.1:8085  (the monitor's reports over time)",
    ]
    running = render.up_summary({**state, "watch": {**watch, "pids": dict.fromkeys(watch["ports"], 5)}}, URLS, "/h", "")
    assert "Prometheus         http://127.0.0.1:9090  (scrapes the model server, evaluates its alert rules)" in running
    assert "Alertmanager       http://127.0.0.1:9093  (sends firing alerts to the alert webhook)" in running


def test_down_and_wrote_lines():
    assert render.down_line(["serve", "worker"]) == "stopped serve, worker"
    assert render.down_line([]) == "nothing was running"
    assert render.wrote_line("prefect.yaml") == "wrote prefect.yaml"


def test_deploy_summary_for_process_and_kubernetes_pools():
    deploy = {"retrain_cron": "0 3 * * 1", "timezone": "UTC", "gpus": 1, "memory": "8Gi", "cpu": "2"}
    ids = {"retrain": "id-r", "promote": "id-p"}
    assert render.deploy_summary(
        ids, "id-a", [], 3, deploy=deploy, monitor_cron="*/30 * * * *", pool="lepton", pool_type="process"
    ) == [
        "deployed retrain/lepton  (id-r)",
        "deployed promote/lepton  (id-p)",
        "retrain runs on cron '0 3 * * 1', monitor on '*/30 * * * *' (UTC)",
        "trigger lepton-retrain-on-drift (id-a): lepton.drift.detected -> retrain/lepton",
    ]
    k8s = render.deploy_summary(
        {},
        "id-a",
        ["lepton-crash-lost-runs", "lepton-retry-crashed"],
        3,
        deploy=deploy,
        monitor_cron="0 * * * *",
        pool="gpu",
        pool_type="kubernetes",
    )
    assert k8s[-2] == (
        "automations lepton-crash-lost-runs and lepton-retry-crashed: a run whose process died is "
        "marked crashed and run again (at most 3 times), resuming from its checkpoint"
    )
    assert k8s[-1] == "work pool gpu (kubernetes): retrain runs as a Job with 1 GPU(s), 8Gi memory, 2 CPU(s)"


def test_env_exports_quote_every_value_and_eval_gives_it_back_unchanged(tmp_path):
    nasty = {
        "A_PLAIN": "http://127.0.0.1:5000",
        "A_SPACE": "lepton:pa ss",
        "A_QUOTES": 'it\'s "$(touch x)" `y`',
        "A_EMPTY": "",
    }
    lines = render.env_exports(nasty)
    assert lines[0] == "export A_PLAIN=http://127.0.0.1:5000"
    assert lines[1] == f"export A_SPACE={shlex.quote('lepton:pa ss')}"
    script = "\n".join(lines) + '\nprintf "%s\\0" "$A_PLAIN" "$A_SPACE" "$A_QUOTES" "$A_EMPTY"'
    out = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, check=True).stdout
    assert out.decode().split("\0")[:-1] == list(nasty.values())
    assert not (tmp_path / "x").exists()  # nothing in a value ran


def test_env_notes():
    assert render.env_notes(False) == ["no stack is up (`lepton up` starts one): these are the local defaults"]
    assert render.env_notes(False, differing=["MLFLOW_TRACKING_URI"]) == [
        "no stack is up (`lepton up` starts one): these are the local defaults",
        "set in this shell, so used over the local defaults: MLFLOW_TRACKING_URI (`unset` for the defaults)",
    ]
    assert render.env_notes(True) == []
    assert render.env_notes(True, ["mlflow"], ["MLFLOW_TRACKING_URI", "AWS_ACCESS_KEY_ID"]) == [
        "the stack's mlflow is down: `lepton up` starts it again",
        "this shell sets MLFLOW_TRACKING_URI, AWS_ACCESS_KEY_ID otherwise; eval the exports to use the stack's",
    ]


def test_monitor_results():
    r = {
        "results": [
            {
                "batch_id": "b-1",
                "verdict": "drift (4 of 64 columns)",
                "report_html": "/h/r.html",
                "report_url": "http://m/#/r",
                "mlflow_run_id": "m1",
                "accepted_for_training": True,
            },
            {"batch_id": "b-2", "verdict": "no drift", "report_html": None, "mlflow_run_id": "m2"},
        ],
        "event_emitted": True,
    }
    assert render.monitor_results(r) == [
        "b-1: drift (4 of 64 columns)",
        "  report  /h/r.html",
        "  in MLflow  http://m/#/r",
        "  MLflow monitoring run  m1",
        "  accepted for the next retrain (`lepton monitor reject b-1` to refuse it)",
        "b-2: no drift",
        "  MLflow monitoring run  m2",
        "drift event emitted",
    ]
    assert render.monitor_results({"results": [], "event_emitted": False}) == ["no new batches", "no drift event"]
    held = {"results": [], "event_emitted": False, "event_suppressed": "suppressed: cool-down until 10:00 UTC"}
    assert render.monitor_results(held)[-1] == "drift event suppressed: cool-down until 10:00 UTC"


def test_accepted_table_in_utc():
    when = calendar.timegm((2026, 12, 3, 14, 5, 0))
    batches = [
        {"id": "strong-0123456789ab", "accepted_at": when, "rows": 120, "path": "/in/strong"},
        {"id": "old", "accepted_at": None, "rows": None, "path": "/in/old"},
    ]
    assert render.accepted_table(batches) == [
        "batch                        accepted (UTC)      rows  path",
        "strong-0123456789ab          2026-12-03 14:05     120  /in/strong",
        "old                          -                      -  /in/old",
    ]
    assert render.accepted_table([]) == ["no accepted batches"]
    assert render.rejected_line({"id": "old", "path": "/in/old"}) == (
        "rejected old: the next retrain will not fold it in (/in/old)"
    )


def test_drift_batch_serving_predict_and_restore_lines():
    assert render.drift_batch_line({"samples": 300, "kind": "rotate", "strength": 0.9, "path": "/b"}) == (
        "wrote 300 images (rotate, strength 0.9) to /b"
    )
    assert render.serving_line("lepton-digits", "champion-onnx", "127.0.0.1", 8000, True, "/h/p") == (
        "serving lepton-digits@champion-onnx on http://127.0.0.1:8000  (POST /v1/predict; auth on; prediction log /h/p)"
    )
    assert "auth off" in render.serving_line("m", "champion", "0.0.0.0", 80, False, "s3://b/p")
    assert "on http://[::1]:8000  (" in render.serving_line("m", "champion", "::1", 8000, True, "/h/p")  # IPv6
    r = {"rows": 10, "model": "lepton-digits", "version": "3", "quarantined": 1, "out": "/o.parquet"}
    assert render.predict_line(r) == "scored 10 samples with lepton-digits v3 (1 quarantined) -> /o.parquet"
    assert render.predict_line({**r, "accuracy": 0.9}) == (
        "scored 10 samples with lepton-digits v3 (1 quarantined), accuracy 0.9000 against the labels in the data"
        " -> /o.parquet"
    )
    assert render.restored_line("ab12", "/r", 7) == "restored data version ab12 to /r (7 files)"


def test_training_cost_lines_in_the_retrain_sweep_and_status_output():
    cost = {"amount": 0.000137, "currency": "USD", "cpu_seconds": 12.34, "peak_rss_mb": 512.4, "wall_seconds": 10.2}
    text = "0.000137 USD  (CPU 12.3 s, peak memory 512 MiB, wall 10.2 s)"
    lines = render.retrain_summary({**RESULT, "cost": cost}, STATUS, "x")
    assert lines[lines.index("this run        test accuracy 0.9512  macro-F1 0.9400") + 1] == f"training cost   {text}"
    champ = {**STATUS, "champion": {**STATUS["champion"], "cost": cost}}
    assert render.registry_table(champ, "x")[3:] == [f"  training cost   {text}", "@previous         none"]
    cost = {"amount": 0.0012, "currency": "EUR", "cpu_seconds": 108.0, "peak_rss_mb": 700.0, "trials": 4}
    sweep = {**SWEEP, "cost": cost}
    last = render.sweep_summary(sweep, "m")[-1]
    assert last == "sweep cost      0.0012 EUR  (CPU 108.0 s, peak memory 700 MiB)  (4 trials)"
