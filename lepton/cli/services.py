"""A quick check, before a command's work starts, that the services it needs answer.

A closed port or a host that never answers ends the command within a few seconds
with one `error:` line naming the service (exit code 1), instead of after the
clients' retries, and before any work was done. Only "does not answer" counts:
any HTTP response (401, 404, a proxy's 502) or a TLS complaint is an answer, and
the command's own client then says what is wrong with it.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import urllib.error
import urllib.request

from lepton.failures import ServiceUnreachable

CHECK_TIMEOUT_S = 3.0  # a health check answers within a few seconds


def why_silent(url: str, timeout: float = CHECK_TIMEOUT_S) -> str | None:
    """None if something answers HTTP at `url`; else why not, in a few words."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=timeout):
            return None
    except (urllib.error.HTTPError, http.client.HTTPException):
        return None  # an answer all the same (an error status, or not HTTP: its client says)
    except urllib.error.URLError as e:
        reason = e.reason
    except OSError as e:  # a timeout while reading the answer, a reset connection
        reason = e
    if isinstance(reason, ssl.SSLError):
        return None
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"no answer within {timeout:g} s"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return f"unknown host ({reason.strerror or reason})"
    if isinstance(reason, OSError):
        return reason.strerror or str(reason) or type(reason).__name__
    return str(reason)


def endpoints(s, needs: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(service, its address, the URL to ask) for each service in `needs` that is a
    server this command talks to: MLflow over HTTP, a Prefect API that outlives the
    command, an S3 endpoint other than AWS itself."""
    out = []
    if "mlflow" in needs and s.tracking_uri.startswith(("http://", "https://")):
        out.append(("mlflow", s.tracking_uri, s.tracking_uri.rstrip("/") + "/health"))
    if "prefect" in needs and s.prefect_api_url and not s.prefect_temporary:
        out.append(("prefect", s.prefect_api_url, s.prefect_api_url.rstrip("/") + "/health"))
    if "s3" in needs and s.s3_endpoint_url:
        out.append(("s3", s.s3_endpoint_url, s.s3_endpoint_url))
    return out


def require(s, needs: tuple[str, ...]) -> None:
    """Raise ServiceUnreachable for the first of `needs` that does not answer."""
    for service, where, url in endpoints(s, needs):
        why = why_silent(url)
        if why is not None:
            raise ServiceUnreachable(service, where, why)
