"""JiraClient: the few Jira Server / Data Center REST calls this service needs.

Facts behind the choices are in docs/jira-api.md (its section numbers below):
- the avatar upload is temporary upload -> crop-confirm -> select, and Jira keeps the
  temporary image in the HTTP session, so both steps must share the cookie jar (§1.2, §1.3);
- a square image <= 48 px skips cropping: the temporary upload already answers an avatar id;
- auth is sent pre-emptively (Jira never challenges, §6); mutating calls carry
  ``X-Atlassian-Token: no-check`` (XSRF, §1.2);
- 429/502/503/504 are retried with back-off honouring Retry-After (§7); 401/403 are not,
  and a refused password blocks further calls for a while: each retry would count as a
  failed login towards Jira's CAPTCHA (§6).
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from urllib3 import exceptions as http_errors

from .config import JiraSettings
from .jira_budget import BudgetUnavailable, ProcessBudget
from .jira_http import JiraHttp, Response
from .metrics import JIRA_REQUESTS, JIRA_SECONDS
from .per_process import PerProcess

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_RETRY_AFTER = 60.0  # longer waits are handed back to the caller's own retry schedule
AUTH_BLOCK_SECONDS = 300.0  # after Jira refused the credentials


class JiraError(Exception):
    """A Jira call failed. ``retryable`` says whether trying later may help."""

    retryable = True

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


class JiraAuthError(JiraError):
    """Credentials refused, CAPTCHA required or permission missing: an operator must act."""

    retryable = False


class JiraRequestError(JiraError):
    """Jira refused the request itself (400 and the like): the same call would fail again."""

    retryable = False


@dataclass(frozen=True)
class JiraUser:
    name: str
    key: str
    avatar_id: str | None
    avatar_is_custom: bool  # avatarUrls carry ownerId only for uploaded avatars (§3)


def avatar_from_urls(avatar_urls: dict | None) -> tuple[str | None, bool]:
    """(avatar id, is custom) from a user's avatarUrls."""
    for size in ("48x48", "32x32", "24x24", "16x16"):
        url = (avatar_urls or {}).get(size)
        if url:
            query = parse_qs(urlsplit(url).query)
            avatar_id = (query.get("avatarId") or [None])[0]
            return avatar_id, bool(query.get("ownerId"))
    return None, False


class JiraClient:
    def __init__(self, settings: JiraSettings, sleep=time.sleep, budget=None):
        """``budget()``: makes the limiter of calls for a process (default: per process,
        app/jira_budget.py), after each fork."""
        self.settings = settings
        self._shared_gate = None  # share_slots()
        self._budget = PerProcess(budget or self._process_budget)
        self.api = settings.url.rstrip("/") + "/rest/api/2"
        self._sleep = sleep
        self._http = JiraHttp(settings)
        self._auth_blocked_until = 0.0
        self._auth_block_reason = ""
        self._version: tuple[int, ...] | None = None

    def share_slots(self, gate) -> None:
        """Take this process's Jira slots from ``gate``, the budget shared with other processes
        (app/shared_slots.py), instead of slots of its own, and space the calls' starts on its
        clock. Before the process's first call."""
        self._shared_gate = gate

    def _process_budget(self) -> ProcessBudget:
        s = self.settings
        return ProcessBudget(s.max_concurrency, s.max_requests_per_second, gate=self._shared_gate)

    # -- users and avatars -------------------------------------------------------------

    def get_user(self, username: str) -> JiraUser | None:
        resp = self._request("GET", "/user", params={"username": username}, ok=(200, 404))
        if resp.status == 404:
            return None
        return user_from_bean(_json(resp), username)

    def read(self, path: str, params: dict | None = None, missing=(404,)):
        """The JSON answer of a GET (an object or a list), or None when Jira answered one of
        ``missing`` (404: no such resource, or an endpoint this version does not have)."""
        resp = self._request("GET", path, params=params, ok=(200, *missing))
        if resp.status != 200:
            return None
        try:
            return resp.json()
        except ValueError:
            raise JiraError(
                f"Jira answered {resp.status} with no JSON ({resp.headers.get('Content-Type', 'no content type')})",
                resp.status,
            ) from None

    def version(self) -> tuple[int, ...]:
        """Jira's version numbers (serverInfo), read once."""
        if self._version is None:
            info = self.read("/serverInfo") or {}
            numbers = info.get("versionNumbers") if isinstance(info, dict) else None
            self._version = tuple(n for n in numbers if isinstance(n, int)) if isinstance(numbers, list) else ()
        return self._version

    def custom_avatars(self, username: str) -> dict[str, str | None]:
        """The user's uploaded (custom) avatars, whoever uploaded them: {id: fileName or None}.

        DC 10+ lists each avatar's fileName (§1.1); older versions leave it out.
        """
        resp = self._request("GET", "/user/avatars", params={"username": username})
        return {str(a["id"]): a.get("fileName") for a in _json(resp).get("custom", []) if a.get("id") is not None}

    def upload_avatar(self, username: str, png: bytes, side: int, filename: str = "avatar.png") -> str:
        """Upload a square PNG of ``side`` px (<= 500) and return the new avatar's id."""
        for attempt in (1, 2):
            temp = self._request(
                "POST",
                "/user/avatar/temporary",
                ok=(200, 201),
                data=png,
                params={"username": username, "filename": filename, "size": len(png)},
                headers={"Content-Type": "image/png"},
            )
            temp_body = _json(temp)
            if temp_body.get("id") is not None:  # square <= 48 px: created without cropping
                return str(temp_body["id"])
            # Confirm is not idempotent (it creates an avatar): no blind retry on a lost answer.
            confirm = self._request(
                "POST",
                "/user/avatar",
                params={"username": username},
                ok=(200, 201, 500),
                json={"cropperOffsetX": 0, "cropperOffsetY": 0, "cropperWidth": side, "needsCropping": False},
                idempotent=False,
            )
            if confirm.status != 500:
                avatar_id = _json(confirm).get("id")
                if avatar_id is None:
                    raise JiraError("Jira confirmed the avatar without an id", confirm.status)
                return str(avatar_id)
            # 500 here means the temporary image was not in our HTTP session (expired session,
            # another cluster node): start over once with a fresh session.
            log.warning("Jira lost the temporary avatar of %s (attempt %d)", username, attempt)
            self._http.forget_session()
        raise JiraError(
            "Jira lost the temporary avatar between upload and crop-confirm; "
            "a Data Center cluster needs sticky sessions",
            500,
        )

    def select_avatar(self, username: str, avatar_id: str) -> None:
        # Jira stores whatever id it is given (§1.4): only pass ids it handed out.
        self._request("PUT", "/user/avatar", params={"username": username}, json={"id": str(avatar_id)}, ok=(200, 204))

    def select_default_avatar(self, username: str) -> None:
        """Select Jira's default avatar explicitly: an id of null is stored as "none chosen",
        which Jira shows as its default (docs/jira-api.md 1.4); its numeric id varies per site."""
        self._request("PUT", "/user/avatar", params={"username": username}, json={"id": None}, ok=(200, 204))

    def delete_avatar(self, username: str, avatar_id: str) -> bool:
        """Delete one custom avatar; False when it was already gone."""
        resp = self._request("DELETE", f"/user/avatar/{avatar_id}", params={"username": username}, ok=(204, 200, 404))
        return resp.status != 404

    def avatar_image(self, username: str, size: str = "48x48") -> bytes | None:
        """The picture Jira now shows for the user (PNG or whatever Jira serves), for the
        dashboard's thumbnails; None when the user is unknown or the picture is not Jira's own
        (Gravatar, another host): the service's credentials go to Jira's base URL only."""
        resp = self._request("GET", "/user", params={"username": username}, ok=(200, 404))
        if resp.status == 404:
            return None
        url = (_json(resp).get("avatarUrls") or {}).get(size)
        if not isinstance(url, str) or not _same_origin(url, self.settings.url):
            return None
        image = self._request("GET", url, ok=(200, 404))
        return image.body if image.status == 200 else None

    def serves_gravatar(self) -> bool:
        """True when the service account's own picture comes from Gravatar: Jira then shows
        Gravatar for everyone, and uploaded avatars are invisible."""
        urls = self.myself().get("avatarUrls") or {}
        return any(isinstance(u, str) and "gravatar.com" in urlsplit(u).netloc for u in urls.values())

    # -- checks ------------------------------------------------------------------------

    def myself(self) -> dict:
        return _json(self._request("GET", "/myself"))

    def is_admin(self) -> bool:
        resp = self._request("GET", "/mypermissions", params={"permissions": "ADMINISTER"})
        perms = _json(resp).get("permissions", {})
        return bool(perms.get("ADMINISTER", {}).get("havePermission"))

    # -- transport ---------------------------------------------------------------------

    def _request(self, method: str, path: str, *, ok=(200,), idempotent: bool = True, **kwargs) -> Response:
        s = self.settings
        if time.monotonic() < self._auth_blocked_until:
            raise JiraAuthError(
                self._auth_block_reason + " (not retried until the service restarts or the block expires)"
            )
        url = path if path.startswith(("http://", "https://")) else self.api + path
        for attempt in range(s.max_retries + 1):
            wait = None
            try:
                with self._budget.get().call():
                    started = time.perf_counter()
                    try:
                        resp = self._http.request(method, url, **kwargs)
                    finally:
                        JIRA_SECONDS.labels(method).observe(time.perf_counter() - started)
                JIRA_REQUESTS.labels(method, str(resp.status)).inc()
            except BudgetUnavailable as exc:
                raise JiraError(str(exc)) from None  # retryable: the queue tries again later
            except http_errors.HTTPError as exc:
                JIRA_REQUESTS.labels(method, "error").inc()
                error = self._transport_error(exc, method, path, idempotent)
            else:
                if resp.status in ok:
                    return resp
                error = self._retryable_answer(resp, method, path)  # or raises
                wait = error.retry_after
            if attempt == s.max_retries:
                raise error
            if wait is None:
                wait = min(30.0, 0.5 * 2**attempt) * random.uniform(0.5, 1.0)
            self._sleep(wait)
        raise AssertionError("unreachable")

    def _retryable_answer(self, resp: Response, method: str, path: str) -> JiraError:
        """The JiraError for an answer worth trying again (429, 502-504), with Jira's
        Retry-After; any other answer raises at once."""
        self._raise_for_auth(resp, method, path)
        if 300 <= resp.status < 400:
            raise JiraRequestError(
                f"{method} {path} answered {resp.status}, a redirect to {resp.headers.get('Location')!r}: "
                "set jira.url to Jira's base URL as Jira itself gives it",
                resp.status,
            )
        if resp.status not in RETRY_STATUSES:
            message = f"{method} {path} answered {resp.status}: {_error_text(resp)}"
            if 400 <= resp.status < 500:
                raise JiraRequestError(message, resp.status)
            raise JiraError(message, resp.status)
        wait = _retry_after(resp)
        _log_rate_limit(resp)
        error = JiraError(f"{method} {path} answered {resp.status}", resp.status, wait)
        if wait is not None and wait > MAX_RETRY_AFTER:
            raise error  # the caller's queue reschedules; don't hold a worker for it
        return error

    def _transport_error(self, exc: Exception, method: str, path: str, idempotent: bool) -> JiraError:
        """The JiraError for a call that got no answer; raised at once where retrying could
        repeat a write Jira may have done (the request went out)."""
        s = self.settings
        if isinstance(exc, http_errors.NewConnectionError):  # refused, unknown host: never sent
            return JiraError(f"cannot reach Jira: {_reason(exc)}")
        if isinstance(exc, http_errors.ConnectTimeoutError):
            return JiraError(f"Jira did not accept a connection within {s.connect_timeout:g}s: {_reason(exc)}")
        if isinstance(exc, (http_errors.SSLError, http_errors.ProxyError)):  # before the request went out
            return JiraError(f"cannot reach Jira: {_reason(exc)}")
        if isinstance(exc, http_errors.ReadTimeoutError):
            error = JiraError(f"Jira did not answer {method} {path} within {s.timeout:g}s")
        elif isinstance(exc, http_errors.ProtocolError):  # the connection broke with the request sent
            error = JiraError(f"connection to Jira lost during {method} {path}: {_reason(exc)}")
        else:
            raise JiraError(f"{method} {path} failed: {_reason(exc)}") from None
        if not idempotent:
            raise error
        return error

    def _raise_for_auth(self, resp: Response, method: str, path: str) -> None:
        if resp.status not in (401, 403):
            return
        denied = resp.headers.get("X-Authentication-Denied-Reason", "")
        login_reason = resp.headers.get("X-Seraph-LoginReason", "")
        if "CAPTCHA" in denied.upper():
            self._block(
                f"Jira requires a CAPTCHA for {self._who()}: log in once in a browser "
                "or have an admin reset the failed-login count"
            )
        if resp.status == 401 and (
            "FAILED" in login_reason or "DENIED" in login_reason or path in ("/myself", "/mypermissions")
        ):
            self._block(f"Jira refused the credentials of {self._who()} (401)")
        if resp.status == 403 and path.startswith("/user/avatar") and "xsrf" in _error_text(resp).lower():
            raise JiraRequestError(f"{method} {path}: Jira's XSRF check refused the call", 403)
        raise JiraAuthError(
            f"{method} {path} answered {resp.status}: {self._who()} is not allowed "
            "(the service account needs the Jira Administrators permission)",
            resp.status,
        )

    def _block(self, reason: str):
        self._auth_block_reason = reason
        self._auth_blocked_until = time.monotonic() + AUTH_BLOCK_SECONDS
        log.error("%s; Jira calls paused for %ds", reason, AUTH_BLOCK_SECONDS)
        raise JiraAuthError(reason, 401)

    def _who(self) -> str:
        return "the personal access token" if self.settings.token else f"user {self.settings.username!r}"


def _retry_after(resp: Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, when.timestamp() - time.time()) if when else None


def _log_rate_limit(resp: Response) -> None:
    if resp.status == 429:
        log.warning(
            "Jira rate limit hit (remaining %s, fill rate %s per %ss): ask for an exemption of the service account",
            resp.headers.get("X-RateLimit-Remaining"),
            resp.headers.get("X-RateLimit-FillRate"),
            resp.headers.get("X-RateLimit-Interval-Seconds"),
        )


def user_from_bean(bean: dict, username: str) -> JiraUser:
    avatar_id, custom = avatar_from_urls(bean.get("avatarUrls"))
    return JiraUser(
        name=bean.get("name", username), key=bean.get("key", ""), avatar_id=avatar_id, avatar_is_custom=custom
    )


def _same_origin(url: str, base: str) -> bool:
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)


def _reason(exc: Exception) -> str:
    """urllib3 wraps the socket's own error; its words say more than the wrapper's."""
    inner = getattr(exc, "reason", None) or getattr(exc, "__cause__", None)
    return str(inner or exc)


def _json(resp: Response) -> dict:
    try:
        body = resp.json()
    except ValueError:
        raise JiraError(
            f"Jira answered {resp.status} with no JSON ({resp.headers.get('Content-Type', 'no content type')})",
            resp.status,
        ) from None
    if not isinstance(body, dict):
        raise JiraError(f"Jira answered {resp.status} with unexpected JSON", resp.status)
    return body


def _error_text(resp: Response) -> str:
    try:
        body = resp.json()
        messages = list(body.get("errorMessages") or []) + [f"{k}: {v}" for k, v in (body.get("errors") or {}).items()]
        if messages:
            return "; ".join(str(m) for m in messages)[:300]
    except (ValueError, AttributeError):
        pass
    return (resp.text or resp.reason or "").strip()[:300]
