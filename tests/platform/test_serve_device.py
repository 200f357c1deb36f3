"""Where the model server's model runs (`serve.device`) and with how many threads
(`serve.threads`, one per worker unless set); `lepton serve`'s refusals of both.
Fast: no registry, a stand-in version and predictor."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lepton_core.errors import LeptonError
from lepton_core.params import ServeParams
from tests.conftest import run_cli


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LEPTON_PROJECT_DIR", str(tmp_path))
    monkeypatch.setenv("LEPTON_HOME", str(tmp_path / "home"))
    return tmp_path


@pytest.mark.parametrize(
    ("pref", "gpu", "device"),
    [
        ("auto", False, "cpu"),
        ("auto", True, "cuda"),
        ("cpu", True, "cpu"),
        ("cpu", False, "cpu"),
        ("cuda", True, "cuda"),
    ],
)
def test_the_device_is_cuda_when_asked_or_present(monkeypatch, pref, gpu, device):
    from lepton.serving.core import serve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    assert serve_device(pref) == device


def test_cuda_without_a_gpu_is_one_line(monkeypatch):
    from lepton.serving.core import serve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(LeptonError, match="serve.device=cuda but torch sees no CUDA device") as e:
        serve_device("cuda")
    assert "\n" not in str(e.value)


def test_threads_are_the_setting_else_one_per_worker():
    from lepton.serving.core import serve_threads

    assert serve_threads(3) == 3  # asked for: as asked
    assert serve_threads(0) == 1  # the default: one (torch's thread per core spins around small passes)


def _server(home, params: ServeParams):
    from effects.runtime.settings import get_settings
    from lepton.serving.server import ModelServer

    return ModelServer("m", "champion", params, get_settings(), None, home / "predictions")


def test_the_server_loads_the_model_on_its_device_and_a_variant_with_its_threads(home, monkeypatch):
    import lepton.serving.core as core
    import lepton.serving.server as serve
    from effects.tracking import tags
    from lepton_core.predictor import Preprocessing

    pre = Preprocessing(kind="image", input_shape=(1, 2, 2), dtype="uint8", scale=1 / 255, classes=("a", "b"))
    loads: list[tuple] = []
    mv = SimpleNamespace(version="7", run_id="r7", tags={})
    monkeypatch.setattr(serve.runs, "client", lambda s: None)
    monkeypatch.setattr(serve, "alias_version", lambda c, name, alias: mv)
    monkeypatch.setattr(core, "predictor_of", lambda m, s, device: loads.append(("torch", device)) or pre)
    monkeypatch.setattr(core, "variant_predictor", lambda m, s, threads: loads.append(("onnx", threads)) or pre)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    server = _server(home, ServeParams(device="auto", workers=2, threads=0))
    try:
        assert server.device == "cuda" and server.refresh()
        mv.version, mv.tags = "8", {tags.VARIANT: "onnx"}
        assert server.refresh()
    finally:
        server.stop()
    assert loads == [("torch", "cuda"), ("onnx", 1)]  # the variant runs with the one thread a worker has

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    mv.version, mv.tags = "9", {}
    server = _server(home, ServeParams(device="auto", threads=3))
    try:
        assert server.device == "cpu" and server.refresh()
    finally:
        server.stop()
    assert loads[-1] == ("torch", "cpu")
    with pytest.raises(LeptonError, match="serve.device=cuda"):
        _server(home, ServeParams(device="cuda"))


def test_the_server_sets_torchs_threads_when_it_starts(home, monkeypatch):
    import lepton.serving.server as serve

    monkeypatch.setattr(serve.ModelServer, "refresh", lambda self: False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        server = _server(home, ServeParams(threads=3, poll_seconds=60))
        server.start()
        assert torch.get_num_threads() == 3  # as asked
        server.stop()
        assert torch.get_num_threads() == 2  # put back: a server inside another program leaves it as it was
        server = _server(home, ServeParams(poll_seconds=60))  # no setting: one
        server.start()
        assert torch.get_num_threads() == 1
        server.stop()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def _refusal(r) -> str:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode != 0 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_lepton_serve_refuses_cuda_without_a_gpu_in_one_line(home, workers):
    from effects.runtime.procs import free_port

    env = {"LEPTON_PROJECT_DIR": str(home), "LEPTON_HOME": str(home / "home"), "CUDA_VISIBLE_DEVICES": ""}
    args = ["serve", "--workers", workers, "--port", str(free_port()), "--set", "serve.device=cuda"]
    line = _refusal(run_cli(args, env, timeout=120))
    assert "serve.device=cuda but torch sees no CUDA device" in line


def test_lepton_serve_refuses_a_worker_count_below_one(home):
    env = {"LEPTON_PROJECT_DIR": str(home), "LEPTON_HOME": str(home / "home")}
    r = run_cli(["serve", "--workers", "0"], env, timeout=60)
    assert r.returncode == 2 and "--workers" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run_cli(["serve", "--set", "serve.workers=0"], env, timeout=60)
    assert r.returncode != 0 and "serve.workers" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_the_shadows_thread_yields_the_cpu_to_the_answers():
    """`yield_cpu` (run by the shadow's thread) lowers that thread's own priority, not the
    process's: the threads that answer keep theirs."""
    import os
    import threading

    from lepton.serving.core import yield_cpu

    seen: dict[str, int] = {}

    def shadow() -> None:
        yield_cpu()
        seen["shadow"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    t = threading.Thread(target=shadow)
    t.start()
    t.join()
    assert seen["shadow"] >= 10 and seen["shadow"] > before
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before
