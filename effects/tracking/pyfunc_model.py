"""The logged MLflow model (models-from-code): Lepton's predictor as a pyfunc.

MLflow copies this file into the model and runs it at load time; with
`lepton_core` shipped as the model's code path, stock
`mlflow.pyfunc.load_model("models:/NAME@champion")` needs only torch, numpy,
pandas and pydantic. The checkpoint is the model's one artifact and is read with
`weights_only=True` (no pickle runs).

Input: raw samples as users have them (uint8 images (N, C, H, W), or (N, H, W) for
one channel; or a table with the training feature columns).
Output: a DataFrame with `label` (class index), `class_name` and `probabilities`.
"""

from __future__ import annotations

import mlflow.pyfunc
from mlflow.models import set_model


class LeptonClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from lepton_core.predictor import Predictor

        self.predictor = Predictor.from_checkpoint(context.artifacts["checkpoint"])

    def predict(self, context, model_input, params=None):
        import pandas as pd

        p = self.predictor.predict(model_input)
        return pd.DataFrame({"label": p.labels, "class_name": p.names,
                             "probabilities": [row.tolist() for row in p.probabilities]})


set_model(LeptonClassifier())
