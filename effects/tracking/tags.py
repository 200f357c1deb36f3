"""Every `lepton.*` tag key Lepton writes on MLflow runs and model versions, in one
place (as MLflow keeps its own in mlflow/utils/mlflow_tags.py). A reader of the
tracking UI or a search filter (`tags."lepton.data_version" = '...'`) uses these."""

from __future__ import annotations

# what MLflow itself reads: nests a run under another in the UI
PARENT = "mlflow.parentRunId"

# ---------------------------------------------------------------- provenance (runs and versions)
DATA_VERSION = "lepton.data_version"  # the DVC md5 of the prepared dataset
DATA_FORMAT = "lepton.data_format"  # the raw format it was prepared from
GIT_COMMIT = "lepton.git_commit"  # the project's commit ("-dirty" when edited)
FLOW_RUN = "lepton.prefect_flow_run_id"
FLOW_RUN_URL = "lepton.prefect_flow_run_url"  # the dashboard link, on a lasting server
RUN_ID = "lepton.run_id"  # on a version: the training run it came from

# ---------------------------------------------------------------- training runs
OWNER = "lepton.owner"  # host:pid:start-ticks of the process working on a RUNNING run
RESUMES = "lepton.resumes"  # how many times a killed run was taken up again
RESUMED_FROM_EPOCH = "lepton.resumed_from_epoch"
DEVICE = "lepton.device"
WORLD_SIZE = "lepton.world_size"  # processes of a data-parallel training
ERROR = "lepton.error"  # the one-line error of a failed run
INIT_FROM = "lepton.init_from"  # a warm start's weights: models:/NAME/VERSION, or a file and its hash
COST_CURRENCY = "lepton.cost.currency"  # the currency of the run's `cost` metric

# ---------------------------------------------------------------- model versions
TEST_ACCURACY = "lepton.test_accuracy"
TEST_RMSE = "lepton.test_rmse"  # a regression version's headline figures
TEST_R2 = "lepton.test_r2"
TASK = "lepton.task"  # classification | regression
VARIANT = "lepton.variant"  # "onnx" or "int8" on a variant version
VARIANT_OF = "lepton.variant_of"  # the version a variant was made from
ACCURACY_DELTA = "lepton.accuracy_delta"  # a variant's accuracy minus its source's
RMSE_INCREASE = "lepton.rmse_increase"  # a regression variant's relative test-RMSE increase over its source
VARIANT_REFUSED_PREFIX = "lepton.variant_refused."  # + kind, on the source version: why that variant was refused
SIZE_BYTES = "lepton.size_bytes"
LATENCY_B1_MS = "lepton.latency_b1_ms"  # median CPU latency of one predictor call, batch 1
LATENCY_B64_MS = "lepton.latency_b64_ms"  # the same at batch 64
ROLLED_BACK = "lepton.rolled_back"
RESTORED_BY_ROLLBACK = "lepton.restored_by_rollback"
SWEEP_RUN_ID = "lepton.sweep_run_id"  # on a version a sweep registered: the sweep's parent run

# ---------------------------------------------------------------- the promotion gate (on the challenger)
GATE_PREFIX = "lepton.gate."
GATE_PROMOTE = GATE_PREFIX + "promote"
GATE_FORCED = GATE_PREFIX + "forced"
GATE_REASON = GATE_PREFIX + "reason"
GATE_P_VALUE = GATE_PREFIX + "p_value"
GATE_CHAMPION_ACCURACY = GATE_PREFIX + "champion_accuracy"
GATE_CHAMPION_RMSE = GATE_PREFIX + "champion_rmse"  # regression
GATE_CHALLENGER_RMSE = GATE_PREFIX + "challenger_rmse"
GATE_CHAMPION_VERSION = GATE_PREFIX + "champion_version"
GATE_TEST_DATA_VERSION = GATE_PREFIX + "test_data_version"
GATE_PROMOTED = GATE_PREFIX + "promoted"  # on a sweep's parent run
GATE_CHALLENGER = GATE_PREFIX + "challenger"  # "true": passed the gate and became @challenger (promote.mode: shadow)
GATE_LIVE_PREFIX = GATE_PREFIX + "live_"  # + a figure of the live half of `lepton promote` (lepton_core.live)

# ---------------------------------------------------------------- sweeps
SWEEP = "lepton.sweep"  # "parent" or "trial"
SWEEP_TRIAL = "lepton.sweep_trial"  # a trial's number (also on the version it became)
SWEEP_RUNNER = "lepton.sweep_runner"
TRIAL_PREFIX = "lepton.trial."  # + a parameter: that trial's value (JSON)
BEST_TRIAL = "lepton.best_trial"
BEST_RUN_ID = "lepton.best_run_id"
BEST_PREFIX = "lepton.best."  # + a parameter: the best trial's value (JSON)
REGISTERED_VERSION = "lepton.registered_version"

# ---------------------------------------------------------------- monitoring runs and the champion
BATCH_ID = "lepton.batch_id"
MONITORED_MODEL_VERSION = "lepton.monitored_model_version"
MONITORED_RUN_ID = "lepton.monitored_run_id"
MONITOR_VERDICT = "lepton.monitor.verdict"
MONITOR_STATUS = "lepton.monitor.status"
MONITOR_EVENT = "lepton.monitor.event"  # what the check led to (a drift event, a cool-down, ...)
MONITOR_LAST_RUN_ID = "lepton.monitor.last_run_id"  # on the champion version
MONITOR_LAST_VERDICT = "lepton.monitor.last_verdict"
