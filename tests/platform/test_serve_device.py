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


def test_a_request_checked_by_the_version_before_a_swap_is_checked_again_by_the_new_one():
    """The batcher scores each request with the version loaded when its batch forms; one
    checked by the version before is checked again by that one, and a request the new
    version refuses gets its own 400 while the rest of the batch is scored."""
    import asyncio

    import numpy as np

    from lepton.serving.core import BadRequest, Loaded
    from lepton.serving.server import _checked_by
    from lepton_core.errors import InputError

    class Checks:
        def __init__(self, refuse: bool) -> None:
            self.refuse, self.seen = refuse, 0

        def check(self, x):
            self.seen += 1
            if self.refuse and x.dtype != np.uint8:
                raise InputError("images of dtype float64; the model reads uint8 pixels 0..255")
            return x

    async def run():
        loop = asyncio.get_running_loop()
        old = Loaded("1", "r1", "d", Checks(False))
        new = Loaded("2", "r2", "d", Checks(True))
        futs = [loop.create_future() for _ in range(3)]
        items = [
            (np.zeros((1, 2), np.uint8), futs[0], "a", new),  # checked by the new version already
            (np.zeros((1, 2), np.uint8), futs[1], "b", old),  # before the swap, and fine for the new one
            (np.zeros((1, 2), np.float64), futs[2], "c", old),  # before the swap, refused by the new one
        ]
        kept = _checked_by(new, items)
        assert [rid for _, _, rid, _ in kept] == ["a", "b"] and all(checker is new for *_, checker in kept)
        assert new.predictor.seen == 2  # b and c checked again; a not
        assert not futs[0].done() and not futs[1].done()
        with pytest.raises(BadRequest) as e:
            futs[2].result()
        assert e.value.status == 400 and "uint8" in e.value.reason

    asyncio.run(run())


# ------------------------------------------------------------ what runs the network
def _built_in(kind: str):
    """A small built-in network of `kind` with BatchNorm statistics as training leaves
    them (not the identity), and its preprocessing."""
    from lepton_core.models import ModelConfig, build_model
    from lepton_core.predictor import Predictor
    from tests.core.test_predictor import IMG, TAB

    torch.manual_seed(0)
    if kind == "cnn":
        cfg, pre = ModelConfig(kind="cnn", input_shape=(1, 4, 4), n_classes=3, width=4, depth=1), IMG
    else:
        cfg, pre = ModelConfig(kind="mlp", input_shape=(3,), n_classes=2), TAB
    model = build_model(cfg).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return Predictor(model, cfg, pre)


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_a_built_in_network_is_served_through_onnx_runtime_with_the_eager_models_logits(kind, monkeypatch):
    """Lepton's own networks run through ONNX Runtime (`serve.threads` its intra-op
    threads), for passes of one instance and of many, within LOGITS_TOLERANCE of the
    eager model's logits; the eager model (which explanations use) is left as it was."""
    import numpy as np
    import onnxruntime as ort

    import lepton.serving.core as core
    from lepton_core.predictor import LOGITS_TOLERANCE

    p = _built_in(kind)
    rng = np.random.default_rng(1)
    x = (
        rng.integers(0, 256, (7, 1, 4, 4), dtype=np.uint8)
        if kind == "cnn"
        else rng.normal(size=(7, 3)).astype(np.float32)
    )
    eager, eager_one = p.forward(p.to_input(x)), p.forward(p.to_input(x[:1]))
    weights = {k: v.clone() for k, v in p.model.state_dict().items()}
    sessions: list[ort.SessionOptions] = []
    real = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession", lambda m, opts, **kw: sessions.append(opts) or real(m, opts, **kw))
    monkeypatch.setattr(core, "predictor_of", lambda mv, s, device: p)
    served = core.serving_predictor(SimpleNamespace(tags={}), None, "cpu", 2, 8)

    assert served is p and p._compiled is not None and len(sessions) == 1
    assert sessions[0].intra_op_num_threads == 2
    with monkeypatch.context() as m:  # no TorchScript module runs a pass: ONNX Runtime does
        m.setattr(torch.jit.ScriptModule, "__call__", lambda *a, **k: pytest.fail("TorchScript ran a pass"))
        many, one = p.forward(p.checked_input(p.check(x))), p.forward(p.checked_input(p.check(x[:1])))
    np.testing.assert_allclose(many, eager, **LOGITS_TOLERANCE)
    np.testing.assert_allclose(one, eager_one, **LOGITS_TOLERANCE)
    assert all(torch.equal(v, weights[k]) for k, v in p.model.state_dict().items()) and not p.model.training


def test_a_network_onnx_runtime_cannot_run_as_the_eager_model_does_falls_back_to_torchscript(monkeypatch):
    """When torch's exporter refuses the network, or ONNX Runtime's logits are not the
    eager model's, the server compiles it with TorchScript instead; a team's own model
    (which may branch on its input) is neither exported nor compiled."""
    import lepton.serving.core as core
    from effects.tracking import onnx_variants
    from lepton_core.models import ModelConfig
    from lepton_core.predictor import Predictor, Preprocessing

    compiled: list[int] = []
    real_compile = Predictor.compile_for_serving
    monkeypatch.setattr(Predictor, "compile_for_serving", lambda self, n: compiled.append(n) or real_compile(self, n))

    p = _built_in("mlp")
    monkeypatch.setattr(core, "predictor_of", lambda mv, s, device: p)
    with monkeypatch.context() as m:
        m.setattr(torch.onnx, "export", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("unsupported op")))
        assert onnx_variants.onnx_runner(p) is None
        core.serving_predictor(SimpleNamespace(tags={}), None, "cpu", 1, 4)
    assert compiled == [4] and isinstance(p._compiled[0], torch.jit.ScriptModule)
    import onnxruntime as ort

    with monkeypatch.context() as m:  # what it exported, ONNX Runtime cannot load
        m.setattr(ort, "InferenceSession", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no kernel")))
        assert onnx_variants.onnx_runner(p) is None

    real_runner = onnx_variants.onnx_runner
    p = _built_in("mlp")

    def off(pr, threads):  # a runtime whose logits are off by more than the tolerance
        run = real_runner(pr, threads)
        return lambda t: run(t) + 1e-3

    with monkeypatch.context() as m:
        m.setattr(core, "onnx_runner", off)
        core.serving_predictor(SimpleNamespace(tags={}), None, "cpu", 1, 4)
    assert compiled == [4, 4] and isinstance(p._compiled[0], torch.jit.ScriptModule)

    class Branchy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x) if x.sum() > 0 else -self.lin(x)

    pre = Preprocessing(kind="tabular", input_shape=(3,), dtype="float32", scale=1.0, classes=("x", "y"))
    custom = Predictor(
        Branchy().eval(), ModelConfig(kind="custom", input_shape=(3,), n_classes=2, class_path="t.B"), pre
    )
    monkeypatch.setattr(core, "onnx_runner", lambda pr, threads: pytest.fail("a team's model was exported"))
    assert not custom.serve_through(lambda t: custom.model(t))
    monkeypatch.setattr(core, "predictor_of", lambda mv, s, device: custom)
    assert core.serving_predictor(SimpleNamespace(tags={}), None, "cpu", 1, 4) is custom
    assert custom._compiled is None and compiled == [4, 4]
