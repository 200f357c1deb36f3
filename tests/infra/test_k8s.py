"""The Kubernetes manifests under infra/k8s/, validated offline against the
Kubernetes API's JSON schemas (kubernetes-validate, strict: an unknown or misspelt
field fails), then checked for what the model server needs: probes on the real
endpoints, the token from a Secret, a Service and an autoscaler that point at it."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
KUBERNETES = "1.33"  # the oldest minor version the manifests promise to work with


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")  # not an API object


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(path):
    docs = _docs(path)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_the_validator_refuses_a_misspelt_or_mistyped_field():
    deployment = _by_kind(_docs(K8S / "model-server.yaml"))["Deployment"]
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/readyz"
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    for bad in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, KUBERNETES, strict=True)


def _by_kind(docs: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in docs}


def test_the_model_server_deployment_service_and_autoscaler_fit_together():
    docs = _by_kind(_docs(K8S / "model-server.yaml"))
    assert {"Deployment", "Service", "HorizontalPodAutoscaler"} <= set(docs)
    dep, svc, hpa = docs["Deployment"], docs["Service"], docs["HorizontalPodAutoscaler"]
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    (c,) = pod["spec"]["containers"]
    port = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["command"][:2] == ["lepton", "serve"] and c["command"][c["command"].index("--port") + 1] == str(
        port["http"]
    )
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert svc["spec"]["ports"][0]["targetPort"] in ("http", port["http"])
    token = {e["name"]: e for e in c["env"]}["LEPTON_SERVE_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": "lepton-serve-token", "key": "token"}
    assert "value" not in token  # never a literal token in a manifest
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", dep["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert c["resources"]["requests"]["cpu"]  # a CPU autoscaler needs a CPU request


def test_the_command_options_exist_and_the_config_names_known_settings():
    from effects.runtime.settings import KNOWN_ENV

    dep = _by_kind(_docs(K8S / "model-server.yaml"))["Deployment"]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    help_text = subprocess.run(
        [sys.executable, "-c", "from lepton.cli import main; main()", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={"COLUMNS": "200", **_env()},
    ).stdout
    for opt in (a for a in c["command"] if a.startswith("--")):
        assert opt in help_text, opt
    config = _by_kind(_docs(K8S / "config.example.yaml"))["ConfigMap"]
    for name in [*config["data"], *(e["name"] for e in c["env"])]:
        assert name in KNOWN_ENV, name


def _env() -> dict:
    import os

    return dict(os.environ)
