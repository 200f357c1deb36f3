"""The prepare task: raw data -> a DVC-versioned prepared dataset."""

from __future__ import annotations

from prefect import task

from effects.data.dvc_store import DataVersion, prepare_cache_key, version_dataset
from effects.runtime.retry import not_user_error
from lepton_core.params import DataParams


def _cache_key(context, parameters) -> str:
    return prepare_cache_key(parameters["params"])


@task(
    name="prepare",
    retries=2,
    retry_delay_seconds=[2, 5],
    retry_condition_fn=not_user_error,
    cache_key_fn=_cache_key,
    persist_result=True,
    timeout_seconds=3600,
)
def prepare_data(params: DataParams) -> DataVersion:
    """Prepare and version the dataset (cached while raw data, params, accepted
    monitor batches and the prepare code are unchanged)."""
    return version_dataset(params)
