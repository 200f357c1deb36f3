"""`lepton serve`: the champion behind a batched HTTP endpoint.

FastAPI under uvicorn (one process). Requests are checked on arrival (one-line 4xx
reasons, never a stack trace) and queued; one batcher coroutine gathers up to
`serve.max_batch` instances or waits `serve.max_wait_ms`, scores them in one
forward pass on a worker thread, and answers each request from that pass. A batch
reads the loaded model once, so every answer names the one version that made it.

Hot swap: a thread polls where the alias points every `serve.poll_seconds`
(polling works with any MLflow registry and needs no Prefect; a promotion event
would be faster but is missed while the server restarts). A new version is loaded
beside the old one and swapped in with one reference assignment: requests in
flight finish on the old model, the next batch uses the new one.

    POST /v1/predict   {"instances": [...]} (JSON) or a .npy array (application/x-npy)
    POST /v1/feedback  {"request_id": ..., "labels": [...]}: true labels of an answered request
    POST /v1/explain   {"instances": [...]}: Integrated Gradients attributions, each of its
                       instance's shape (at most `serve.max_explain_instances`, one at a time)
    GET  /v1/model     name, version, alias, data version, run id, task
    GET  /healthz      the process answers
    GET  /readyz       a model is loaded (503 before)
    GET  /metrics      Prometheus text format

    /v2/...            the Open Inference Protocol (KServe v2: health, metadata, infer)
    POST /invocations  MLflow's scoring protocol; GET /ping, /health its probes
                       (both in lepton/serving/protocols.py, through the same predict)

A classifier answers labels, class names and probabilities; a regression model
(`/v1/model` says its task) answers `values`, numbers in the target's units, and its
feedback labels are the true numbers.

The /v1/* routes take the bearer token when the server has one (one dependency,
`require_token`), and so do /v2 and /invocations; the probes (/v2/health/* and
/ping, /health included) and /metrics stay open.

Explanations cost some 30 forward and backward passes per instance, so they are
bounded and kept apart from predictions: one at a time (a second one meanwhile gets
429), on a thread of their own (the batcher's passes never queue behind them), in
chunks that stop once `serve.explain_timeout_s` is spent (504).
"""
