"""A team's own data loader: scikit-learn's diabetes table (442 patients, 10 numeric
features, and `target`, a measure of disease progression one year later).

`data.format: custom` calls `load()` and reads the DataFrame it returns: the
`data.label_column` (target) is what is predicted, the other columns are features.
"""

from __future__ import annotations

import pandas as pd


def load() -> pd.DataFrame:
    from sklearn.datasets import load_diabetes

    frame: pd.DataFrame = load_diabetes(as_frame=True).frame
    return frame
