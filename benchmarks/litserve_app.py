"""The same champion behind LitServe (dynamic batching built in), for the library
comparison in benchmarks/serve.py: `python benchmarks/litserve_app.py PORT`.
It scores through Lepton's predictor and answers as `lepton serve` does."""

from __future__ import annotations

import sys
from pathlib import Path

import litserve as ls
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from effects.tracking.registry import load_alias  # noqa: E402
from lepton_core.predictor import softmax  # noqa: E402


class ChampionAPI(ls.LitAPI):
    def setup(self, device) -> None:
        self.mv, self.predictor = load_alias("lepton-digits", "champion")

    def decode_request(self, request) -> np.ndarray:
        return self.predictor.check(np.asarray(request["instances"]))

    def batch(self, inputs: list) -> list:
        return inputs  # requests may hold several instances: concatenated in predict

    def predict(self, xs: list) -> list:
        logits = self.predictor.logits(np.concatenate(xs))
        bounds = np.cumsum([0] + [len(x) for x in xs])
        return [logits[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def unbatch(self, output: list) -> list:
        return output

    def encode_response(self, logits) -> dict:
        p = softmax(logits)
        labels = p.argmax(1)
        classes = self.predictor.classes
        return {
            "version": str(self.mv.version),
            "labels": labels.tolist(),
            "class_names": [classes[i] for i in labels],
            "probabilities": p.astype(np.float64).round(6).tolist(),
        }


if __name__ == "__main__":
    server = ls.LitServer(
        ChampionAPI(), accelerator="cpu", workers_per_device=1, max_batch_size=64, batch_timeout=0.005
    )
    server.run(host="127.0.0.1", port=int(sys.argv[1]), generate_client_file=False, log_level="warning")
