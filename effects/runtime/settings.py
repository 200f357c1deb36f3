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
    LEPTON_STATE_DB        the monitor's shared state (a SQLAlchemy URL every worker reaches;
                           default: NAME_lepton beside `lepton up --db`'s databases, else local files)
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY   S3 credentials (never written to params or tags)

How long a command waits for a service (every command that talks to one gives up
in bounded time with one `error:` line naming it):

    LEPTON_SERVICE_TIMEOUT  seconds one request to MLflow or Prefect may take (default 60;
                            raise it for large uploads over a slow link). MLflow's and
                            Prefect's clients try 4 times, about 2, 4 (and 8) s apart, unless
                            MLFLOW_HTTP_REQUEST_MAX_RETRIES / _BACKOFF_FACTOR / _TIMEOUT,
                            PREFECT_API_REQUEST_TIMEOUT or PREFECT_CLIENT_MAX_RETRIES are set.

Nothing here runs at import time: call `get_settings()` / `configure_environment()`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from effects.runtime import stack_state
from lepton_core.errors import LeptonError

# Every variable Lepton itself reads or sets for its services; infra/ files may use
# no others (tests/infra checks this).
KNOWN_ENV: frozenset[str] = frozenset(
    {
        "LEPTON_PROJECT_DIR",
        "LEPTON_HOME",
        "LEPTON_ARTIFACT_ROOT",
        "LEPTON_DVC_REMOTE",
        "LEPTON_DB_URL",
        "LEPTON_PREFECT_PORT",
        "LEPTON_MLFLOW_PORT",
        "LEPTON_S3_PORT",
        "LEPTON_S3_ENDPOINT_URL",
        "LEPTON_S3_BUCKET",
        "LEPTON_S3_SSE",
        "LEPTON_WORK_POOL",
        "LEPTON_DEBUG",
        "LEPTON_PREFECT_TEMPORARY",
        "LEPTON_SERVE_TOKEN",
        "LEPTON_SERVE_PORT",
        "LEPTON_PREDICTION_LOG",
        "LEPTON_DDP_RDZV",
        "LEPTON_STATE_DB",
        "LEPTON_SERVICE_TIMEOUT",
        "LEPTON_ALERT_WEBHOOK",
        "LEPTON_ALERT_FORMAT",
        "LEPTON_EVIDENTLY_URL",
        "LEPTON_EVIDENTLY_SECRET",
        "LEPTON_PROMETHEUS_PORT",
        "LEPTON_ALERTMANAGER_PORT",
        "LEPTON_EVIDENTLY_PORT",
        "EVIDENTLY_SECRET",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_S3_ENDPOINT_URL",
        "MLFLOW_S3_UPLOAD_EXTRA_ARGS",
        "MLFLOW_DISABLE_TELEMETRY",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION",
        "PREFECT_API_URL",
        "PREFECT_UI_API_URL",
        "PREFECT_HOME",
        "PREFECT_SERVER_DATABASE_CONNECTION_URL",
        "PREFECT_SERVER_ANALYTICS_ENABLED",
        "PREFECT_API_DATABASE_CONNECTION_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
        "DO_NOT_TRACK",
        # set by Lepton for the processes it starts (telemetry off, quiet CLIs, server wiring)
        "PREFECT_CLI_PROMPT",
        "GIT_PYTHON_REFRESH",
        "DVC_NO_ANALYTICS",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
        "WEED_S3_SSE_KEK_PASSPHRASE",
        "PREFECT_SERVER_API_HOST",
        "PREFECT_SERVER_API_PORT",
        "PREFECT_UI_ENABLED",
        # authentication of the stack's services (`lepton up`; off with --no-auth)
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_AUTH_CONFIG_PATH",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
        "PREFECT_SERVER_API_AUTH_STRING",
        "PREFECT_API_AUTH_STRING",
        "WEED_S3_SSE_KEK",
        "WEED_JWT_SIGNING_KEY",
        "WEED_JWT_SIGNING_READ_KEY",
        "WEED_JWT_FILER_SIGNING_KEY",
        "WEED_JWT_FILER_SIGNING_READ_KEY",
        # how long a command waits for a service (configure_environment's bounded defaults)
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
        "MLFLOW_HTTP_REQUEST_TIMEOUT",
        "PREFECT_API_REQUEST_TIMEOUT",
        "PREFECT_CLIENT_MAX_RETRIES",
        # printed by `lepton env` for a user's own clients (the model server's address, S3 for
        # the AWS CLI and SDKs)
        "LEPTON_SERVE_URL",
        "AWS_ENDPOINT_URL",
    }
)

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

# A service that does not answer ends a command in bounded time. MLflow's own defaults
# (7 retries, backoff factor 2, 120 s a request) kept `lepton status` silent for about
# 2 minutes against a closed port; Prefect's (5 retries, 2**n s apart, 60 s) about 1.
SERVICE_TIMEOUT_S = 60  # LEPTON_SERVICE_TIMEOUT: one request to MLflow or Prefect (whole seconds)
_RETRY_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",  # 4 tries, about 0 + 2 + 4 s apart (urllib3, + up to 1 s jitter)
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "PREFECT_CLIENT_MAX_RETRIES": "3",  # 4 tries, about 2, 4, 8 s apart (its 503/429 retries included)
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
    stack: bool = False  # the services are those of `lepton up` (set by configure_environment)
    prediction_log_uri: str | None = None  # LEPTON_PREDICTION_LOG: a folder or s3://bucket/prefix; None = local
    ddp_rendezvous: str | None = None  # LEPTON_DDP_RDZV: host:port of torchrun's rendezvous when train.nodes > 1
    state_db: str | None = field(default=None, repr=False)  # LEPTON_STATE_DB: the monitor's shared state (URL)

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
        """The local prediction log: where `lepton serve` writes it by default, and its
        spool (parts waiting for S3) when the log lives on S3."""
        return self.home / "serve" / "predictions"

    @property
    def prediction_log(self) -> str:
        """Where `lepton serve` writes its prediction log and the monitor reads it:
        LEPTON_PREDICTION_LOG (a folder or s3://bucket/prefix; an S3 prefix under
        `lepton up`), else the local folder."""
        return self.prediction_log_uri or str(self.prediction_log_dir)

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
        prediction_log_uri=env.get("LEPTON_PREDICTION_LOG") or None,
        ddp_rendezvous=env.get("LEPTON_DDP_RDZV") or None,
        state_db=env.get("LEPTON_STATE_DB") or None,
        ports={
            k: int(env[f"LEPTON_{k.upper()}_PORT"])
            for k in ("prefect", "mlflow", "s3", "serve")
            if env.get(f"LEPTON_{k.upper()}_PORT", "").isdigit()
        },
    )


def redact_uri(uri: str) -> str:
    """Hide a password in a URI (postgresql://user:secret@host -> user:***@host)."""
    parts = urlsplit(uri)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


class StackDown(LeptonError):
    """A service of the configured stack is not running: an error, not local state."""


def private_files() -> None:
    """Files and folders this process (and every process it starts) creates are its
    user's alone (0600/0700): the `lepton` command sets it at start."""
    os.umask(0o077)


def private_home(home: Path) -> None:
    """Lepton's state is its user's alone: the home is 0700 (older homes are closed
    too), so nothing under it can be reached by another local user."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    if home.stat().st_mode & 0o077:
        home.chmod(0o700)


def service_timeout() -> int:
    """LEPTON_SERVICE_TIMEOUT in whole seconds (MLflow reads its timeout as an int)."""
    raw = os.environ.get("LEPTON_SERVICE_TIMEOUT", "").strip()
    if not raw:
        return SERVICE_TIMEOUT_S
    if not raw.isdigit() or int(raw) < 1:
        raise LeptonError(f"LEPTON_SERVICE_TIMEOUT={raw!r}: a whole number of seconds, at least 1")
    return int(raw)


def bound_service_calls(timeout: int | None = None) -> None:
    """Make MLflow's and Prefect's clients give up in bounded time (see _RETRY_ENV):
    `timeout` seconds a request (default LEPTON_SERVICE_TIMEOUT, and never more),
    a few quick retries. Variables the user set win."""
    t = service_timeout() if timeout is None else min(timeout, service_timeout())
    for k, v in {**_RETRY_ENV, "MLFLOW_HTTP_REQUEST_TIMEOUT": str(t), "PREFECT_API_REQUEST_TIMEOUT": str(t)}.items():
        os.environ.setdefault(k, v)


def configure_environment(
    settings: Settings | None = None,
    use_stack: bool = True,
    allow_down: bool = False,
    bounded: bool = True,
    timeout: int | None = None,
) -> Settings:
    """Point MLflow and Prefect at the settings (before they are imported) and turn
    telemetry off. Only fills in variables the user has not set.

    While a stack is configured for this home (`lepton up` succeeded, no `lepton
    down` since), its servers are used: the tracking URI, the Prefect API, the S3
    DVC remote and the credentials of each. One of its services being down is then
    an error naming it (StackDown), never a quiet switch to local state;
    `allow_down` (for `lepton status`) returns the settings anyway. Local state
    (SQLite, a temporary Prefect server) is used only when no stack is configured.

    `bounded`: this process's MLflow and Prefect clients give up in bounded time
    (`bound_service_calls`, with `timeout` seconds a request at most); `lepton up`
    passes False, so the flow runs of the stack's worker (long, unattended) keep
    the clients' own patient retries.
    """
    s = settings or get_settings()
    private_home(s.home)
    for k, v in _QUIET_ENV.items():
        os.environ.setdefault(k, v)
    if bounded:
        bound_service_calls(timeout)
    if use_stack:
        state = stack_state.configured(s.home)
        if state is not None:
            down = stack_state.dead(state, stack_state.NEEDED)
            if down and not allow_down:
                raise StackDown(
                    f"the stack's {down[0]} is down ({stack_state.describe(state, down[0])}); "
                    "run `lepton up` to start it again (`lepton down` to use local state instead)"
                )
            for k, v in stack_state.client_env(s.home, state).items():
                os.environ.setdefault(k, v)
            s = replace(get_settings(), stack=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", s.tracking_uri)
    os.environ.setdefault("PREFECT_HOME", str(s.prefect_home))
    # A temporary Prefect server lives only as long as the command; say so once.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    return s


def registry_label(s: Settings) -> str:
    """Which registry a command used, for its output."""
    uri = s.tracking_uri
    if s.stack and uri.rstrip("/") == os.environ.get("MLFLOW_TRACKING_URI", "").rstrip("/"):
        return f"{uri} (lepton up)"
    if uri.startswith("sqlite:"):
        return f"local sqlite {uri.removeprefix('sqlite:///')}"
    return f"{redact_uri(uri)} (MLFLOW_TRACKING_URI)"
