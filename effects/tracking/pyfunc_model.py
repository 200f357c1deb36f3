"""The logged MLflow model (models-from-code): Lepton's predictor as a pyfunc.

MLflow copies this file into the model and runs it at load time; with
`lepton_core` shipped as the model's code path, stock
`mlflow.pyfunc.load_model("models:/NAME@champion")` needs only torch, numpy,
pandas and pydantic. The checkpoint is the model's one artifact and is read with
`weights_only=True` (no pickle runs).

Input: raw samples as users have them (uint8 images (N, C, H, W), or (N, H, W) for
one channel; or a table with the training feature columns).
Output: a DataFrame with `label` (class index), `class_name` and `probabilities`;
for a regression model, one column `value` (float, in the target's units).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class LeptonClassifier(PythonModel):
    def load_context(self, context) -> None:
        from lepton_core.predictor import Predictor

        self.predictor = Predictor.from_checkpoint(context.artifacts["checkpoint"])

    # The logged signature, not this hint, checks the input: images arrive as an
    # ndarray, a table's rows as a DataFrame. MLflow validates and converts nothing for
    # an ndarray hint (it infers no schema from one), and asks for no hint on every load.
    def predict(self, context: Any, model_input: np.ndarray, params: dict | None = None) -> pd.DataFrame:
        p = self.predictor.predict(model_input)
        if p.values is not None:  # regression
            return pd.DataFrame({"value": np.asarray(p.values, dtype=np.float64)})
        return pd.DataFrame(
            {"label": p.labels, "class_name": p.names, "probabilities": [row.tolist() for row in p.probabilities]}
        )


set_model(LeptonClassifier())
