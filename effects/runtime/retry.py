"""Retry policy shared by the tasks: I/O hiccups are retried, user errors are not."""

from __future__ import annotations

from lepton_core.errors import LeptonError


def not_user_error(task, task_run, state) -> bool:
    """`retry_condition_fn`: retry unless the failure is the user's input."""
    try:
        state.result()
    except LeptonError:
        return False
    except Exception:  # noqa: BLE001 - anything else may be transient
        return True
    return True
