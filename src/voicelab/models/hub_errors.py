"""Hub errors as one line that names the endpoint tried and the mirror options, and the choice of
hub (source, endpoints) a download uses."""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from collections.abc import Iterator

from voicelab.errors import EnvironmentProblem, ModelError, VoiceLabError
from voicelab.models.catalogue import HF_MIRROR

_NET_ERRORS = {
    "ConnectError",
    "ConnectTimeout",
    "ReadTimeout",
    "WriteTimeout",
    "PoolTimeout",
    "TimeoutException",
    "NetworkError",
    "TransportError",
    "RemoteProtocolError",
    "ReadError",
    "ProxyError",
    "SSLError",
    "ConnectionError",
    "NewConnectionError",
    "NameResolutionError",
    "MaxRetryError",
    "ChunkedEncodingError",
    "RequestTimeoutError",
    "IncompleteRead",
}

_NOT_FOUND = {
    "RepositoryNotFoundError",
    "RevisionNotFoundError",
    "RemoteEntryNotFoundError",
    "NotExistError",
}

_AUTH = {"GatedRepoError", "AuthenticationError", "PermissionDeniedError"}

_HTTP = {"HfHubHTTPError", "HTTPError", "HTTPStatusError", "HubError", "APIError", "ServerError"}

_HUB_NAMES = {
    "huggingface": "Hugging Face",
    "modelscope": "ModelScope",
    "local": "the local mirror",
}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def classify_hub_error(exc: BaseException) -> str | None:
    """offline | network | notfound | auth | disk | http, or None for a bug (keep the traceback)."""
    chain = list(_chain(exc))
    names = [type(e).__name__ for e in chain]
    if "OfflineModeIsEnabled" in names:
        return "offline"
    for e in chain:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return "disk"
    if any(n in _NOT_FOUND for n in names):
        return "notfound"
    if any(n in _AUTH for n in names):
        return "auth"
    for e, n in zip(chain, names, strict=True):
        if n in _NET_ERRORS or isinstance(e, (ConnectionError, TimeoutError, socket.gaierror)):
            return "network"
    if "LocalEntryNotFoundError" in names:  # HF: no network and nothing cached
        return "network"
    if any(n in _HTTP for n in names):
        return "http"
    return None


def _reason(exc: BaseException) -> str:
    """The innermost readable cause, one short line (``[Errno 111] Connection refused``)."""
    text = ""
    for e in _chain(exc):
        line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if line:
            text = line
    if "Failed to resolve" in text or "Name or service not known" in text:
        text = "host name not resolved"
    return text[:120]


def mirror_hint(source: str) -> str:
    if source == "huggingface":
        return (
            "no network or Hugging Face is blocked: use --source modelscope, or a mirror: "
            f"--endpoint {HF_MIRROR} (or export HF_ENDPOINT={HF_MIRROR}); "
            "run the same command again to resume"
        )
    if source == "modelscope":
        return (
            "no network or ModelScope is unreachable: use --source huggingface "
            f"(in mainland China with --endpoint {HF_MIRROR}), check proxy settings; "
            "run the same command again to resume"
        )
    return "check that the mirror folder exists"


def hub_error(
    exc: BaseException, source: str, endpoint: str, repo: str, hint: str | None = None
) -> VoiceLabError | None:
    """The one-line error for a hub client's exception, or None when it is not a hub problem.
    ``hint`` replaces the mirror advice (where the other hub is no option)."""
    kind = classify_hub_error(exc)
    hub = _HUB_NAMES.get(source, source)
    if kind is None:
        return None
    if kind == "offline":
        return EnvironmentProblem(
            f"HF_HUB_OFFLINE is set: cannot download {repo} from {endpoint}",
            "unset HF_HUB_OFFLINE to download; "
            + (hint or f"or use --source modelscope, or a mirror: --endpoint {HF_MIRROR}"),
        )
    if kind == "network":
        return EnvironmentProblem(
            f"cannot reach {hub} at {endpoint} ({_reason(exc)})", hint or mirror_hint(source)
        )
    if kind == "notfound":
        return ModelError(
            f"{hub} at {endpoint} has no {repo} (or not that revision/file): {_reason(exc)}",
            "check --revision and --source; some mirrors do not carry every repository",
        )
    if kind == "auth":
        return ModelError(
            f"{hub} at {endpoint} refused access to {repo}: {_reason(exc)}",
            "log in with the hub's CLI (hf auth login / modelscope login) or use the other source",
        )
    if kind == "disk":
        return EnvironmentProblem(
            f"disk full while downloading {repo}", "free some space and run the same command again"
        )
    return EnvironmentProblem(
        f"{hub} at {endpoint} failed for {repo}: {_reason(exc)}",
        f"try again later; {mirror_hint(source)}",
    )


@contextlib.contextmanager
def hub_errors(source: str, endpoint: str, repo: str, hint: str | None = None) -> Iterator[None]:
    """Hub failures as one VoiceLab line; the clients' own retry WARNINGs are held back (they
    would precede that line, and it says what they say)."""
    try:
        with _quiet_client_loggers():
            yield
    except VoiceLabError:
        raise
    except ImportError as e:
        if (e.name or "").split(".")[0] not in ("huggingface_hub", "modelscope", "modelscope_hub"):
            raise
        raise EnvironmentProblem(
            f"the {e.name.split('.')[0]} client library is not installed",
            "pip install 'voicelab[download]' (or choose the other --source)",
        ) from e
    except Exception as e:
        mapped = hub_error(e, source, endpoint, repo, hint)
        if mapped is None:
            raise
        raise mapped from e


@contextlib.contextmanager
def _quiet_client_loggers() -> Iterator[None]:
    """The hub clients' WARNING lines (retries) only with -v. They log through loggers they
    create on first use, so no level can be set on them beforehand: logging below ERROR is
    switched off for the call (VoiceLab itself logs nothing inside one)."""
    from voicelab.console import is_verbose

    if is_verbose():
        yield
        return
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(before)
