"""etcd user/password authentication for the store's HTTP sessions (etcd's role-based auth).

etcd3gw (2.7, the newest) has no credentials of its own, so the token flow rides on requests'
own authentication hook (`requests.auth.AuthBase`, as ``HTTPDigestAuth`` does): each member's
session authenticates once (``POST /v3/auth/authenticate``) and sends the token in the
``Authorization`` header of every request, etcd3gw's and the watch stream's alike.

etcd's simple tokens are per member and expire after ``--auth-token-ttl`` (300 s) without use,
and a restarted member forgets them all: a request answered 401 "invalid auth token" is sent
again once with a new token, so the store never sees it.  A watch stream is answered 200 and
canceled instead; `etcd_watch` calls `forget` so its next stream authenticates again.

A wrong user or password, or a cluster with auth enabled while no user is configured, raises
`EtcdAuthError`: `etcd_log` turns it into a one-line `EtcdUnavailable` at once (another member
would answer the same).  Neither message ever holds the password.  With a user, a member
reached over plain ``http://`` raises `EtcdAuthError` before anything is sent: the password
and the token travel over TLS only.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import requests
import urllib3
from etcd3gw import exceptions as etcd_errors

AUTHENTICATE = "/v3/auth/authenticate"
INVALID_TOKEN = "invalid auth token"
NO_USER = "user name is empty"
BAD_PASSWORD = "invalid user ID or password"
HEAD_BYTES = 300  # of an error's body: enough for etcd's JSON error, bounded whatever it sends


class EtcdAuthError(RuntimeError):
    """The cluster refused this instance's credentials (or wants some); names the user only."""


class TokenAuth(requests.auth.AuthBase):
    """The token of one member's session; thread-safe (the session is shared by threads)."""

    def __init__(self, session: requests.Session, user: str, password: str, timeout_s: float):
        self._session = session
        self.user = user
        self._password = password
        self._timeout_s = timeout_s
        self._token = ""
        self._lock = threading.Lock()
        self.authentications = 0  # how many times a token was obtained (tests, metrics)
        self._failed = ""  # why the last authentication failed
        self._failed_at: float | None = None  # when (monotonic); None: it did not

    def __repr__(self) -> str:  # never the password, never the token
        return f"TokenAuth(user={self.user!r})"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        url = request.url or ""
        if url.endswith(AUTHENTICATE):
            return request
        if self.user:
            request.headers["Authorization"] = self._renew(url, stale="")
        request.register_hook("response", self._on_response)
        return request

    def forget(self, token: str | None) -> None:
        """``token`` was refused: the next request authenticates again (unless another
        thread already did)."""
        with self._lock:
            if token and token == self._token:
                self._token = ""

    def _renew(self, url: str, stale: str) -> str:
        """The current token, or a new one if there is none or it is ``stale``.

        One thread authenticates at a time; the threads that waited for it while it failed
        fail at once, for ``timeout_s`` after the failure, instead of each trying again in
        turn.  A member that forgot its tokens (restarted) during a quorum loss cannot
        authenticate anyone (etcd's authenticate is a Raft proposal): every request sent to
        it meanwhile wanted a new token, and the k-th waited k timeouts, far past the call's
        bound (measured: 10 threads, 0.5 s timeout, the last one 5.0 s)."""
        with self._lock:
            if self._token and self._token != stale:
                return self._token
            failed_at = self._failed_at
            if failed_at is not None and time.monotonic() - failed_at < self._timeout_s:
                raise etcd_errors.ConnectionFailedError(
                    f"authentication failed {time.monotonic() - failed_at:.1f} s ago "
                    f"({self._failed})"
                )
            try:
                token = self._authenticate(url)
            except EtcdAuthError:
                raise  # refused credentials: said at once, not remembered
            except etcd_errors.Etcd3Exception as exc:
                why = getattr(exc, "detail_text", "") or str(exc) or type(exc).__name__
                self._failed, self._failed_at = str(why)[:200], time.monotonic()
                raise
            self._failed_at = None
            return token

    def _authenticate(self, url: str) -> str:
        """``POST /v3/auth/authenticate`` to the member of ``url``; the new token."""
        base = url.split("/v3/", 1)[0]
        if not base.startswith("https://"):
            # Defence in depth beside `config.Settings.validate`: settings built another
            # way (an EtcdSettings without ca_cert) must not send the password in clear
            # text either, nor get a token to send so.  Raised before anything is sent.
            raise EtcdAuthError(
                f"etcd user {self.user!r}: refusing to send credentials over plain http; "
                "an etcd user needs etcd TLS (etcd_tls_ca)"
            )
        try:
            answer = self._session.post(
                base + AUTHENTICATE,
                json={"name": self.user, "password": self._password},
                timeout=self._timeout_s,
            )
        except requests.exceptions.Timeout as exc:
            raise etcd_errors.ConnectionTimeoutError(str(exc)) from None
        except requests.exceptions.ConnectionError as exc:
            raise etcd_errors.ConnectionFailedError(str(exc)) from None
        if answer.status_code == 200:
            self._token = str(answer.json()["token"])
            self.authentications += 1
            return self._token
        text = answer.text[:300]
        if BAD_PASSWORD in text or "authentication is not enabled" in text:
            raise EtcdAuthError(
                f"etcd user {self.user!r}: authentication failed ({_reason(text)}); "
                "check etcd_user and etcd_password_file"
            )
        if answer.status_code == 503:
            raise etcd_errors.ConnectionFailedError(text, answer.reason)
        raise etcd_errors.Etcd3Exception(text, answer.reason)

    def _on_response(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        if response.status_code not in (400, 401):
            return response
        text = head(response)
        if response.status_code == 401 and self.user and INVALID_TOKEN in text:
            sent = response.request.headers.get("Authorization", "")
            retry = response.request.copy()
            retry.headers["Authorization"] = self._renew(response.request.url or "", str(sent))
            response.close()
            # sent by the adapter, not the session: its hooks (this one) do not run again,
            # so a token refused twice in a row fails the request (once, not a loop)
            again: requests.Response = response.connection.send(retry, **kwargs)
            again.history.append(response)
            again.request = retry
            return again
        if response.status_code == 400 and NO_USER in text:
            raise EtcdAuthError(
                "the etcd cluster requires authentication: set etcd_user and etcd_password_file"
            )
        return response


def head(response: requests.Response) -> str:
    """The first `HEAD_BYTES` of an error response's body, read at most once.

    Not ``response.text``: that reads the whole body, whatever size the member announces (this
    hook runs before requests reads a body, on the watch stream too).  What is read becomes the
    response's content, so etcd3gw's error message and the watch see the same bytes; a body
    left unread closes its connection (the pool would hand it out with those bytes pending)."""
    if response._content is False:  # not read yet
        data = b""
        if response.raw is not None:
            try:
                data = response.raw.read(HEAD_BYTES, decode_content=True) or b""
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                # cut off or stalled (a member dying mid-answer): requests does not wrap what
                # urllib3 raises here, so it is made the connection error it is
                response.raw.close()
                cut = f"an error answer cut off: {exc}"
                raise requests.exceptions.ConnectionError(cut) from None
            if not response.raw.closed:  # more followed: the connection is not reusable
                response.raw.close()
        response._content = bytes(data)
        response._content_consumed = True
    return (response._content or b"")[:HEAD_BYTES].decode(errors="replace")


def _reason(text: str) -> str:
    for marker in (BAD_PASSWORD, "authentication is not enabled"):
        if marker in text:
            return marker
    return text[:100]


def install(session: requests.Session, user: str, password: str, timeout_s: float) -> None:
    """Authenticate ``session``'s requests as ``user`` (also with no user: then a cluster that
    wants credentials gives a clear `EtcdAuthError` instead of a generic failure)."""
    session.auth = TokenAuth(session, user, password, timeout_s)


def forget(session: requests.Session, token: str | None) -> None:
    """A watch stream on ``session`` was canceled for ``token``: authenticate again."""
    if isinstance(session.auth, TokenAuth):
        session.auth.forget(token)
