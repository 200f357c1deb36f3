"""Lepton's server vs its floor and stock `mlflow models serve`, side by side in one run.

The same champion (trained here on the digits into a temporary home), the same
1-instance payload (one raw 8x8 uint8 digit), the same machine. Each server runs in
its own process with one worker (and `lepton serve --workers 2` besides); the load
generator runs in a process of its own (one asyncio loop, raw HTTP/1.1 keep-alive
connections), at concurrency 1, 8, 32 and 64, for `--seconds` per cell after a
warm-up; and once more with the champion as its own shadow (`serve.shadow`), for what
scoring every answered request a second time costs the answers.

The floor is a bare FastAPI route under the same uvicorn that reads the body and
answers Lepton's own answer, byte for byte (benchmarks/floor_app.py): what any Python
model server spends at least. `lepton serve` is driven on `/v1/predict`, on the Open
Inference Protocol's `/v2/models/lepton-digits/infer` and on MLflow's `/invocations`.
Prints req/s, p50 and p99 latency and errors, the latency of `POST /v1/explain`
(Integrated Gradients, 32 steps) for the same digit on `lepton serve` with one client
(the server runs one explanation at a time), and the ratios against the floor.

    .venv/bin/python benchmarks/serve.py [--seconds 8] [--rounds 1] [--concurrency 1 8 32 64] [--litserve]
                                          [--variants] [--regression] [--team]

Every server is measured in turn at one concurrency before the next (the order reversed
every other round, the floor, the shadow, /v1 and /v2 first), so the cells each target
compares are taken seconds apart.
`--rounds N` measures every cell N times and reports each figure's median; each target
(/v1 against the floor, /v2 against /v1, /v1 with a shadow against /v1 alone) is the
ratio of each round's two cells, and its median over the rounds, each round's printed
beside it.

`--variants` also runs `lepton optimize` on the champion and serves its ONNX and int8
variants (`lepton serve --variant onnx|int8`, through ONNX Runtime): a column each.

`--regression` also trains a regression model (scikit-learn's diabetes table as a CSV,
`data.task: regression`; the request is one row of its 10 features, the answer a value)
and `--team` the team's own model (examples/team_model, a TinyResNet on the digits, the
same request as the built-in model's); each is served by `lepton serve` and by
`mlflow models serve` in the same run, beside the built-in model. Without them the run
is the one the published figures come from.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _load(port: int, path: str, body: bytes, headers: dict, concurrency: int, seconds: float) -> dict:
    """Closed-loop load: `concurrency` keep-alive HTTP/1.1 connections from one asyncio
    loop, each sending the next request when the last one is answered, for `seconds`.
    A raw client (request bytes built once, the answer read by its Content-Length):
    it drives the floor (benchmarks/floor_app.py) far harder than any model server, so
    the figures are the servers' and not the client's. Runs in its own process."""
    import asyncio

    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = head.encode() + b"\r\n" + body
    lat: list[float] = []
    errors = 0

    async def answer(reader: asyncio.StreamReader) -> int:
        status_and_headers = await reader.readuntil(b"\r\n\r\n")
        lines = status_and_headers.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        return status

    async def client(stop: float) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                writer.write(request)
                ok = await asyncio.wait_for(answer(reader), 60) == 200
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                ok = False
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            if ok:
                lat.append(time.perf_counter() - t0)
            else:
                errors += 1
        writer.close()

    async def run() -> float:
        t0 = time.perf_counter()
        stop = time.monotonic() + seconds
        await asyncio.gather(*(client(stop) for _ in range(concurrency)))
        return time.perf_counter() - t0

    wall = asyncio.run(run())
    all_lat = np.array(lat) * 1000
    return {
        "rps": len(all_lat) / wall,
        "p50": float(np.percentile(all_lat, 50)) if len(all_lat) else float("nan"),
        "p99": float(np.percentile(all_lat, 99)) if len(all_lat) else float("nan"),
        "errors": errors,
        "n": len(all_lat),
    }


def _median(cells: list[dict]) -> dict:
    """One cell over the rounds: the median of each figure, the errors summed."""
    out = {k: float(np.median([c[k] for c in cells])) for k in ("rps", "p50", "p99")}
    return {**out, "errors": sum(c["errors"] for c in cells), "n": sum(c["n"] for c in cells)}


def _wait(port: int, path: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server on port {port} exited; see its log")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"server on port {port} did not answer {path} in {timeout:.0f} s")


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _pause(procs: list[subprocess.Popen], stop: bool) -> None:
    """Stop (SIGSTOP) or continue (SIGCONT) each process's group."""
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGSTOP if stop else signal.SIGCONT)
        except ProcessLookupError:
            pass


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


REGRESSION_MODEL = "bench-diabetes"
TEAM_MODEL = "team-tinyresnet"  # examples/team_model/params.yaml's registry.model_name


def _train(env: dict, args: list[str], what: str) -> None:
    print(f"training {what} ...", flush=True)
    r = subprocess.run(
        [str(BIN / "lepton"), "retrain", "--no-progress", *args], env=env, cwd=ROOT, capture_output=True, text=True
    )
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])


def _regression_model(tmp: Path, env: dict) -> tuple[list[str], list[float]]:
    """Train the diabetes regression model; its feature names and one row to send."""
    import pandas as pd
    import yaml
    from sklearn.datasets import load_diabetes

    frame: pd.DataFrame = load_diabetes(as_frame=True).frame
    frame.to_csv(tmp / "diabetes.csv", index=False)
    params = {
        "data": {"format": "csv", "path": str(tmp / "diabetes.csv"), "label_column": "target", "task": "regression"},
        "train": {"epochs": 50, "patience": 10, "width": 64, "lr": 3e-3},
        "registry": {"model_name": REGRESSION_MODEL},
    }
    (tmp / "regression.yaml").write_text(yaml.safe_dump(params))
    _train(env, ["--params", str(tmp / "regression.yaml")], "the regression model (diabetes)")
    features = frame.drop(columns="target")
    return [str(c) for c in features.columns], features.iloc[0].astype(float).tolist()


def _spawn(cmd: list[str], env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def _model_servers(tmp: Path, env: dict, tag: str, model: str, lepton_body: bytes, mlflow_body: bytes) -> dict:
    """`lepton serve` and `mlflow models serve` for one more registered model."""
    from effects.runtime.procs import free_port

    lp, mp = free_port(), free_port()
    slug = tag.replace(" ", "-")
    lepton = [str(BIN / "lepton"), "serve", "--model", model, "--port", str(lp)]
    mlflow = [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{model}@champion", "--env-manager", "local"]
    mlflow += ["-h", "127.0.0.1", "-p", str(mp)]
    return {
        f"lepton serve ({tag})": (
            _spawn(lepton, env, ROOT, tmp / f"lepton-{slug}.log"),
            lp,
            "/readyz",
            "/v1/predict",
            lepton_body,
        ),
        f"mlflow models serve ({tag})": (
            _spawn(mlflow, env, tmp, tmp / f"mlflow-{slug}.log"),
            mp,
            "/ping",
            "/invocations",
            mlflow_body,
        ),
    }


def _explain_latency(pool, server: tuple, headers: dict, seconds: float, width: int) -> dict:
    """`POST /v1/explain` of the same one-digit body on `lepton serve`, one client."""
    _proc, port, _ready, _path, body = server
    pool.apply(_load, (port, "/v1/explain", body, headers, 1, 1.0))  # warm-up (the first one imports Captum)
    res = pool.apply(_load, (port, "/v1/explain", body, headers, 1, seconds))
    print(
        f"{'lepton serve /v1/explain':<{width}} c=1   {res['rps']:8.1f} req/s  p50 {res['p50']:7.2f} ms  "
        f"p99 {res['p99']:8.2f} ms  errors {res['errors']}",
        flush=True,
    )
    return res


def _has_workers(env: dict) -> bool:
    r = subprocess.run([str(BIN / "lepton"), "serve", "--help"], env=env, cwd=ROOT, capture_output=True, text=True)
    return "--workers" in r.stdout


def _post(port: int, path: str, body: bytes) -> bytes:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("POST", path, body, {"Content-Type": "application/json"})
    r = c.getresponse()
    out = r.read()
    if r.status != 200:
        raise SystemExit(f"POST {path} on port {port}: {r.status} {out[:300]!r}")
    return out


def _floor_and_protocols(tmp: Path, env: dict, lepton: tuple, x: np.ndarray) -> dict:
    """The floor (a bare FastAPI route answering what `lepton serve` answers, byte for
    byte) and `lepton serve`'s other protocols on the same process: the Open Inference
    Protocol (/v2, its input named as the server's metadata says) and MLflow's
    scoring protocol (/invocations)."""
    from effects.runtime.procs import free_port

    proc, port, _ready, path, body = lepton
    answer = tmp / "answer.json"
    answer.write_bytes(_post(port, path, body))
    fp = free_port()
    out = {
        "floor (bare FastAPI)": (
            _spawn(
                [sys.executable, str(ROOT / "benchmarks" / "floor_app.py"), str(fp), str(answer)],
                env,
                tmp,
                tmp / "floor.log",
            ),
            fp,
            "/healthz",
            "/predict",
            body,
        )
    }
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/v2/models/lepton-digits")
    r = c.getresponse()
    meta = json.loads(r.read() or b"{}")
    if r.status == 200:
        spec = meta["inputs"][0]
        v2 = {
            "inputs": [
                {"name": spec["name"], "shape": list(x.shape), "datatype": spec["datatype"], "data": x.ravel().tolist()}
            ]
        }
        _post(port, "/v2/models/lepton-digits/infer", json.dumps(v2).encode())
        out["lepton serve /v2"] = (proc, port, "/readyz", "/v2/models/lepton-digits/infer", json.dumps(v2).encode())
        inv = json.dumps({"inputs": x.tolist()}).encode()
        _post(port, "/invocations", inv)
        out["lepton serve /invocations"] = (proc, port, "/readyz", "/invocations", inv)
    return out


FLOOR, V1, SHADOW = "floor (bare FastAPI)", "lepton serve", "lepton serve, shadow"


def _measuring_order(names: list[str]) -> list[str]:
    """The servers in the order each concurrency's cells are measured: the shadow, /v1, /v2
    and the floor side by side, as the targets compare them, then the rest."""
    first = [n for n in (FLOOR, SHADOW, V1, "lepton serve /v2") if n in names]
    return first + [n for n in names if n not in first]


def _paired(runs: dict, a: str, b: str, c: int, figure: Callable[[dict, dict], float]) -> tuple[float, str]:
    """`figure(cell of a, cell of b)` in each round (the two cells measured seconds
    apart), as the median over the rounds, and every round's when there are several."""
    values = [figure(x, y) for x, y in zip(runs[a][c], runs[b][c], strict=True)]
    median = float(np.median(values))
    return median, "" if len(values) == 1 else " (rounds: " + ", ".join(f"{v:.2f}" for v in values) + ")"


def _targets(runs: dict, results: dict, concurrency: list[int]) -> None:
    """Lepton against the floor and its protocols against each other: each ratio taken
    in every round between cells measured back to back, and its median over the rounds
    (a machine whose speed drifts between rounds then moves both sides of a ratio)."""
    floor = results.get(FLOOR)
    if floor and 32 in concurrency:
        r, each = _paired(runs, V1, FLOOR, 32, lambda a, b: a["rps"] / b["rps"])
        print(f"c=32: lepton serve /v1 at {r:.0%} of the floor's throughput{each}")
    if floor and 1 in concurrency:
        d, each = _paired(runs, V1, FLOOR, 1, lambda a, b: a["p50"] - b["p50"])
        print(f"c=1: lepton serve /v1 p50 {d:+.2f} ms over the floor's{each}")
    for name in ("lepton serve /v2", "lepton serve /invocations", "lepton serve, 2 workers"):
        if name in runs:
            for c in concurrency:
                r, each = _paired(runs, name, V1, c, lambda a, b: a["rps"] / b["rps"])
                print(f"c={c}: {name} at {r:.0%} of /v1's throughput{each}")
    if SHADOW in runs:
        for c in concurrency:
            r, each = _paired(runs, SHADOW, V1, c, lambda a, b: a["p99"] / b["p99"] - 1)
            print(f"c={c}: with a shadow, p99 {r:+.0%} against /v1 alone{each}")
    if floor:
        busiest = max(
            (n for n in results if n != FLOOR),
            key=lambda n: max(r["rps"] for r in results[n].values()),
        )
        top = max(r["rps"] for r in results[busiest].values())
        print(
            f"the load generator drove the floor to {max(r['rps'] for r in floor.values()):.0f} req/s; "
            f"the busiest server ({busiest}) reached {top:.0f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="measured seconds per cell (default 8)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every cell this many times and report each figure's median (and each target's per round)",
    )
    ap.add_argument(
        "--litserve",
        action="store_true",
        help="also serve it with LitServe (benchmarks/litserve_app.py): the library comparison",
    )
    ap.add_argument(
        "--variants",
        action="store_true",
        help="also serve the champion's ONNX and int8 variants (lepton optimize first)",
    )
    ap.add_argument(
        "--regression",
        action="store_true",
        help="also train and serve a regression model (diabetes), with lepton serve and mlflow models serve",
    )
    ap.add_argument(
        "--team",
        action="store_true",
        help="also train and serve the team's model (examples/team_model), with lepton serve and mlflow models serve",
    )
    args = ap.parse_args()
    # a SIGTERM or SIGHUP ends the run through its clean-up too (the servers stopped, and
    # continued first when stopped), as Ctrl-C does
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    sys.path.insert(0, str(ROOT))
    from effects.runtime.procs import free_port

    tmp = Path(tempfile.mkdtemp(prefix="lepton-bench-serve-"))
    env = {
        **os.environ,
        "LEPTON_HOME": str(tmp / "home"),
        "LEPTON_PROJECT_DIR": str(ROOT),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'home' / 'mlflow.db'}",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
    }
    for k in ("PREFECT_API_URL", "LEPTON_SERVE_TOKEN"):
        env.pop(k, None)
    try:
        print("training the champion ...", flush=True)
        r = subprocess.run(
            [str(BIN / "lepton"), "retrain", "--no-progress", "--set", "train.epochs=8"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise SystemExit(r.stderr[-3000:])
        x = np.load(next((tmp / "home" / "datasets").iterdir()) / "x_test.npy")[:1]  # (1, 1, 8, 8) uint8
        if args.variants:
            print("building the ONNX and int8 variants ...", flush=True)
            r = subprocess.run([str(BIN / "lepton"), "optimize"], env=env, cwd=ROOT, capture_output=True, text=True)
            print(r.stdout, end="", flush=True)
            if r.returncode != 0:
                raise SystemExit(r.stderr[-3000:])
        if args.regression:
            names, row = _regression_model(tmp, env)
        if args.team:
            _train(env, ["--params", str(ROOT / "examples" / "team_model" / "params.yaml")], "the team model")
    except (OSError, SystemExit):  # nothing was served yet: no server's log to keep
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    lp, mp, sp = free_port(), free_port(), free_port()
    procs = {
        "lepton serve": (
            subprocess.Popen(
                [str(BIN / "lepton"), "serve", "--port", str(lp)],
                env=env,
                cwd=ROOT,
                stdout=open(tmp / "lepton.log", "wb"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            ),
            lp,
            "/readyz",
            "/v1/predict",
            json.dumps({"instances": x.tolist()}).encode(),
        ),
        "mlflow models serve": (
            subprocess.Popen(
                [
                    str(BIN / "mlflow"),
                    "models",
                    "serve",
                    "-m",
                    "models:/lepton-digits@champion",
                    "--env-manager",
                    "local",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(mp),
                ],
                env=env,
                cwd=tmp,
                stdout=open(tmp / "mlflow.log", "wb"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            ),
            mp,
            "/ping",
            "/invocations",
            json.dumps({"inputs": x.tolist()}).encode(),
        ),
    }
    if args.litserve:
        procs["litserve"] = (
            subprocess.Popen(
                [sys.executable, str(ROOT / "benchmarks" / "litserve_app.py"), str(sp)],
                env=env,
                cwd=tmp,
                stdout=open(tmp / "litserve.log", "wb"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            ),
            sp,
            "/health",
            "/predict",
            json.dumps({"instances": x.tolist()}).encode(),
        )
    if args.variants:
        for variant in ("onnx", "int8"):
            port = free_port()
            procs[f"lepton serve {variant}"] = (
                subprocess.Popen(
                    [str(BIN / "lepton"), "serve", "--port", str(port), "--variant", variant],
                    env=env,
                    cwd=ROOT,
                    stdout=open(tmp / f"lepton-{variant}.log", "wb"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                ),
                port,
                "/readyz",
                "/v1/predict",
                json.dumps({"instances": x.tolist()}).encode(),
            )
    if args.regression:
        procs.update(
            _model_servers(
                tmp,
                env,
                "regression",
                REGRESSION_MODEL,
                json.dumps({"instances": [row]}).encode(),
                # its signature is a table: MLflow's scoring server reads a DataFrame
                json.dumps({"dataframe_split": {"columns": names, "data": [row]}}).encode(),
            )
        )
    if args.team:
        procs.update(
            _model_servers(
                tmp,
                env,
                "team model",
                TEAM_MODEL,
                json.dumps({"instances": x.tolist()}).encode(),
                json.dumps({"inputs": x.tolist()}).encode(),
            )
        )
    workers = _has_workers(env)
    if workers:
        wp = free_port()
        procs["lepton serve, 2 workers"] = (
            _spawn(
                [str(BIN / "lepton"), "serve", "--port", str(wp), "--workers", "2"], env, ROOT, tmp / "lepton-2.log"
            ),
            wp,
            "/readyz",
            "/v1/predict",
            json.dumps({"instances": x.tolist()}).encode(),
        )
    # the same version again as the shadow: what scoring every answered request twice costs the answers
    sp2 = free_port()
    procs["lepton serve, shadow"] = (
        _spawn(
            [str(BIN / "lepton"), "serve", "--port", str(sp2), "--set", "serve.shadow=champion"],
            env,
            ROOT,
            tmp / "lepton-shadow.log",
        ),
        sp2,
        "/readyz",
        "/v1/predict",
        json.dumps({"instances": x.tolist()}).encode(),
    )
    headers = {"Content-Type": "application/json"}
    results: dict[str, dict[int, dict]] = {}
    explain: dict = {}
    paused: list[subprocess.Popen] = []
    ctx = multiprocessing.get_context("spawn")
    try:
        for proc, port, ready, _path, _body in procs.values():
            _wait(port, ready, proc)
        procs = {**_floor_and_protocols(tmp, env, procs["lepton serve"], x), **procs}
        for proc, port, ready, _path, _body in procs.values():
            _wait(port, ready, proc)
        width = max(len("lepton serve /v1/explain"), *(len(name) for name in procs))
        runs: dict[str, dict[int, list[dict]]] = {name: {c: [] for c in args.concurrency} for name in procs}
        # LitServe's processes poll while idle, spending CPU time, which would
        # slow every server measured beside them: they are stopped but for their own cells
        paused += [proc for name, (proc, *_) in procs.items() if name == "litserve"]
        _pause(paused, True)
        with ctx.Pool(1) as pool:
            order = _measuring_order(list(procs))
            for name in order:  # a first warm-up of each (imports, first passes, the answer's caches)
                proc, port, _ready, path, body = procs[name]
                _pause([proc] if proc in paused else [], False)
                pool.apply(_load, (port, path, body, headers, 4, 2.0))
                _pause([proc] if proc in paused else [], True)
            for round_ in range(args.rounds):
                if args.rounds > 1:
                    print(f"round {round_ + 1} of {args.rounds}", flush=True)
                for c in args.concurrency:
                    # every server in turn at this concurrency, so that the cells a ratio compares
                    # are measured seconds apart; the order reversed every other round
                    for name in order if round_ % 2 == 0 else order[::-1]:
                        proc, port, _ready, path, body = procs[name]
                        _pause([proc] if proc in paused else [], False)
                        pool.apply(_load, (port, path, body, headers, c, 0.5))  # warm again, at this concurrency
                        res = pool.apply(_load, (port, path, body, headers, c, args.seconds))
                        runs[name][c].append(res)
                        print(
                            f"{name:<{width}} c={c:<3} {res['rps']:8.1f} req/s  p50 {res['p50']:7.2f} ms  "
                            f"p99 {res['p99']:8.2f} ms  errors {res['errors']}",
                            flush=True,
                        )
                        _pause([proc] if proc in paused else [], True)
            results = {name: {c: _median(cells) for c, cells in by_c.items()} for name, by_c in runs.items()}
            explain = _explain_latency(pool, procs["lepton serve"], headers, args.seconds, width)
    finally:
        _pause(paused, False)  # a stopped process would not take its SIGTERM
        for proc, *_ in procs.values():
            _stop(proc)

    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"{args.seconds:g} s per cell, median of {args.rounds} round(s); 1-instance JSON requests\n"
    )
    print("| concurrency | server | req/s | p50 ms | p99 ms | errors |")  # a row per server
    print("|---|---|---:|---:|---:|---:|")
    for c in args.concurrency:
        for name in procs:
            res = results[name][c]
            print(f"| {c} | {name} | {res['rps']:.0f} | {res['p50']:.1f} | {res['p99']:.1f} | {res['errors']} |")
    print(
        f"\nPOST /v1/explain, one digit, one client: {explain['rps']:.1f} req/s  p50 {explain['p50']:.1f} ms  "
        f"p99 {explain['p99']:.1f} ms  errors {explain['errors']}\n"
    )
    _targets(runs, results, args.concurrency)
    for c in args.concurrency:
        a, b = results["lepton serve"][c], results["mlflow models serve"][c]
        print(f"c={c}: throughput {a['rps'] / b['rps']:.2f}x, p99 {a['p99'] / b['p99']:.2f}x of mlflow models serve")
    for tag in [t for t, on in (("regression", args.regression), ("team model", args.team)) if on]:
        for c in args.concurrency:
            a, b = results[f"lepton serve ({tag})"][c], results[f"mlflow models serve ({tag})"][c]
            print(
                f"{tag} c={c}: throughput {a['rps'] / b['rps']:.2f}x, p99 {a['p99'] / b['p99']:.2f}x "
                "of mlflow models serve"
            )
    # the temporary home (models, registry, logs) goes with a run that got this far; a run
    # that stopped on a server that would not start keeps it, for that server's log
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
