"""Where things live. Embedded defaults under `<project>/.lepton/`; standard
variables override them:

    LEPTON_PROJECT_DIR   project root (default: nearest parent holding params.yaml, else cwd)
    LEPTON_HOME          state folder (default: <project>/.lepton)
    MLFLOW_TRACKING_URI  tracking + registry (default: sqlite:///<home>/mlflow.db)
    LEPTON_ARTIFACT_ROOT MLflow artifact location for new experiments (default: <home>/mlartifacts)
    LEPTON_DVC_REMOTE    DVC remote URL (default: <home>/dvc-remote)
    PREFECT_API_URL      a Prefect server (default: a temporary local one)
    PREFECT_HOME         Prefect's own state (default: <home>/prefect)

The live stack (`lepton up`) adds:

    LEPTON_DB_URL          postgresql://... backend of both servers (default: SQLite files)
    LEPTON_PREFECT_PORT    Prefect server port (default 4200)
    LEPTON_MLFLOW_PORT     MLflow server port (default 5000)
    LEPTON_S3_PORT         S3 port of the bundled SeaweedFS (default 8333)
    LEPTON_S3_ENDPOINT_URL an S3-compatible endpoint (MinIO, SeaweedFS, ...); unset = AWS
    LEPTON_S3_BUCKET       bucket for MLflow artifacts and the DVC remote (default lepton)
    LEPTON_S3_SSE          server-side encryption to ask for on writes (e.g. AES256)
    LEPTON_WORK_POOL       Prefect work pool the deployments use (default lepton)
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY   S3 credentials (never written to params or tags)

Nothing here runs at import time: call `get_settings()` / `configure_environment()`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from effects import stack_state

# Every variable Lepton itself reads or sets for its services; infra/ files may use
# no others (tests/infra checks this).
KNOWN_ENV: frozenset[str] = frozenset({
    "LEPTON_PROJECT_DIR", "LEPTON_HOME", "LEPTON_ARTIFACT_ROOT", "LEPTON_DVC_REMOTE",
    "LEPTON_DB_URL", "LEPTON_PREFECT_PORT", "LEPTON_MLFLOW_PORT", "LEPTON_S3_PORT",
    "LEPTON_S3_ENDPOINT_URL", "LEPTON_S3_BUCKET", "LEPTON_S3_SSE", "LEPTON_WORK_POOL",
    "LEPTON_DEBUG", "LEPTON_PREFECT_TEMPORARY", "LEPTON_SERVE_TOKEN", "LEPTON_SERVE_PORT",
    "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_S3_UPLOAD_EXTRA_ARGS",
    "MLFLOW_DISABLE_TELEMETRY", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION",
    "PREFECT_API_URL", "PREFECT_UI_API_URL", "PREFECT_HOME", "PREFECT_SERVER_DATABASE_CONNECTION_URL",
    "PREFECT_SERVER_ANALYTICS_ENABLED", "PREFECT_API_DATABASE_CONNECTION_URL",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
    "DO_NOT_TRACK",
    # set by Lepton for the processes it starts (telemetry off, quiet CLIs, server wiring)
    "PREFECT_CLI_PROMPT", "GIT_PYTHON_REFRESH", "DVC_NO_ANALYTICS", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "WEED_S3_SSE_KEK_PASSPHRASE",
    "PREFECT_SERVER_API_HOST", "PREFECT_SERVER_API_PORT", "PREFECT_UI_ENABLED",
})

# Telemetry to outside services is off unless the user turns it on themselves.
_QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_CLI_PROMPT": "false",
    "GIT_PYTHON_REFRESH": "quiet",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


@dataclass(frozen=True)
class Settings:
    project_dir: Path
    home: Path
    tracking_uri: str
    artifact_root: str
    dvc_remote: str
    prefect_home: Path
    s3_endpoint_url: str | None = None  # None = AWS itself
    s3_bucket: str = "lepton"
    s3_sse: str | None = None  # LEPTON_S3_SSE as given: AES256, aws:kms, "none" or unset
    work_pool: str = "lepton"
    db_url: str | None = None  # the live stack's PostgreSQL backend; None = SQLite files
    prefect_api_url: str | None = None  # None = a temporary local server per command
    prefect_temporary: bool = False  # PREFECT_API_URL is this command's own temporary server
    debug: bool = False
    ports: dict = field(default_factory=dict)  # LEPTON_{PREFECT,MLFLOW,S3}_PORT for `lepton up`
    serve_token: str | None = field(default=None, repr=False)  # LEPTON_SERVE_TOKEN: bearer token of `lepton serve`

    @property
    def params_file(self) -> Path:
        return self.project_dir / "params.yaml"

    @property
    def prefect_ui_api_url(self) -> str | None:
        """A Prefect server whose dashboard outlives this command (links point there)."""
        return None if self.prefect_temporary else self.prefect_api_url

    @property
    def sse(self) -> str | None:
        """The server-side encryption to ask for on S3 writes (None: none)."""
        return None if not self.s3_sse or self.s3_sse.lower() == "none" else self.s3_sse

    @property
    def data_repo(self) -> Path:
        """The DVC repository that versions prepared datasets."""
        return self.home / "data"

    @property
    def datasets_dir(self) -> Path:
        """Read-only copies of prepared datasets, one folder per data version."""
        return self.home / "datasets"

    @property
    def prediction_log_dir(self) -> Path:
        """Where `lepton serve` writes its prediction log and the monitor reads it."""
        return self.home / "serve" / "predictions"

    @property
    def checkpoints_dir(self) -> Path:
        return self.home / "checkpoints"

    @property
    def locks_dir(self) -> Path:
        return self.home / "locks"


def _find_project_dir() -> Path:
    here = Path.cwd().resolve()
    for p in (here, *here.parents):
        if (p / "params.yaml").exists() and (p / "pyproject.toml").exists():
            return p
    return here


def get_settings() -> Settings:
    env = os.environ
    project = Path(env.get("LEPTON_PROJECT_DIR") or _find_project_dir()).resolve()
    home = Path(env.get("LEPTON_HOME") or project / ".lepton").resolve()
    return Settings(
        project_dir=project,
        home=home,
        tracking_uri=env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}",
        artifact_root=env.get("LEPTON_ARTIFACT_ROOT") or str(home / "mlartifacts"),
        dvc_remote=env.get("LEPTON_DVC_REMOTE") or str(home / "dvc-remote"),
        prefect_home=Path(env.get("PREFECT_HOME") or home / "prefect").resolve(),
        s3_endpoint_url=env.get("LEPTON_S3_ENDPOINT_URL") or None,
        s3_bucket=env.get("LEPTON_S3_BUCKET") or "lepton",
        s3_sse=env.get("LEPTON_S3_SSE") or None,
        work_pool=env.get("LEPTON_WORK_POOL") or "lepton",
        db_url=env.get("LEPTON_DB_URL") or None,
        prefect_api_url=env.get("PREFECT_API_URL") or None,
        prefect_temporary=env.get("LEPTON_PREFECT_TEMPORARY") == "1",
        debug=env.get("LEPTON_DEBUG") == "1",
        serve_token=env.get("LEPTON_SERVE_TOKEN") or None,
        ports={k: int(env[f"LEPTON_{k.upper()}_PORT"]) for k in ("prefect", "mlflow", "s3", "serve")
               if env.get(f"LEPTON_{k.upper()}_PORT", "").isdigit()},
    )


def redact_uri(uri: str) -> str:
    """Hide a password in a URI (postgresql://user:secret@host -> user:***@host)."""
    parts = urlsplit(uri)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


def configure_environment(settings: Settings | None = None, use_stack: bool = True) -> Settings:
    """Point MLflow and Prefect at the settings (before they are imported) and turn
    telemetry off. Only fills in variables the user has not set.

    When `lepton up` is running for this home, its servers come first: the tracking
    URI, the Prefect API, the S3 DVC remote and its credentials.
    """
    s = settings or get_settings()
    s.home.mkdir(parents=True, exist_ok=True)
    for k, v in _QUIET_ENV.items():
        os.environ.setdefault(k, v)
    if use_stack:
        state = stack_state.running(s.home)
        if state is not None:
            for k, v in stack_state.client_env(s.home, state).items():
                os.environ.setdefault(k, v)
            s = get_settings()
    os.environ.setdefault("MLFLOW_TRACKING_URI", s.tracking_uri)
    os.environ.setdefault("PREFECT_HOME", str(s.prefect_home))
    # A temporary Prefect server lives only as long as the command; say so once.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    return s
