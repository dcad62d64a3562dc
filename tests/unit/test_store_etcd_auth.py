"""The etcd store on a cluster with role-based auth (user + password, `etcd_auth`).

A 3-member cluster of its own with client TLS (https only, certificates from ovs-pki: a user
without etcd TLS is refused, `config`), auth enabled through the gateway API and tokens
expiring after 1 s without use (``--auth-token-ttl 1``), so token expiry happens for real
within a test.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import certifi
import pytest
import requests

from controller import config
from controller.events import EventBus
from controller.store import Store, StoreUnavailable
from controller.store.etcd_auth import TokenAuth
from controller.store.etcd_log import EtcdLog, EtcdUnavailable
from controller.store.etcd_settings import EtcdSettings
from controller.store.etcd_watch import LogWatch
from controller.store.replicated import EtcdStore

pytestmark = pytest.mark.etcd

USER, PASSWORD = "tenantnet", "s3cret-Pw-" + uuid.uuid4().hex[:8]


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


@pytest.fixture(scope="module")
def auth_cluster() -> Iterator[Any]:
    """3 members over TLS with auth on: root, and USER with read-write on every key."""
    from lab.etcd_cluster import ETCD, EtcdCluster

    if not os.path.exists(ETCD):
        pytest.skip("etcd is not installed (Debian package etcd-server)")
    root = Path(tempfile.mkdtemp(prefix="tn-etcd-auth-"))
    cluster = EtcdCluster(root, extra_args=["--auth-token-ttl", "1"], tls=True)
    cluster.start()
    try:
        for path, body in [
            ("/user/add", {"name": "root", "password": uuid.uuid4().hex}),
            ("/role/add", {"name": "root"}),
            ("/user/grant", {"user": "root", "role": "root"}),
            ("/role/add", {"name": "tn"}),
            ("/role/grant", {"name": "tn", "perm": {"permType": "READWRITE", "key": _b64("/"),
                                                    "range_end": _b64("0")}}),
            ("/user/add", {"name": USER, "password": PASSWORD}),
            ("/user/grant", {"user": USER, "role": "tn"}),
            ("/enable", {}),
        ]:  # fmt: skip
            cluster.http(cluster.members[0], "/v3/auth" + path, body)  # raises unless 200
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def settings(auth_cluster: Any, etcd_settings_for: Any) -> EtcdSettings:
    settings: EtcdSettings = etcd_settings_for(auth_cluster, user=USER, password=PASSWORD)
    return settings


def _auth(log: EtcdLog, first_pass: bool = True) -> TokenAuth:
    """The token holder of the member's client that calls try first (short attempts), or of
    the one with the full timeout (the watch's)."""
    client = log._passes[0][0] if first_pass else log.client(0)
    auth = client.session.auth
    assert isinstance(auth, TokenAuth)
    return auth


def test_the_store_works_with_credentials(
    tmp_path: Path, auth_cluster: Any, settings: EtcdSettings
) -> None:
    """Over TLS: the members answer https only, verified against the ovs-pki CA, at the
    address they listen on (its certificate names 127.0.0.1: old lab, ``localhost``)."""
    assert settings.protocol == "https" and settings.ca_cert == auth_cluster.ca
    assert {host for host, _ in settings.endpoints} == {"127.0.0.1"}
    with pytest.raises(requests.RequestException):  # no plain http beside it
        requests.get(f"http://{auth_cluster.members[0].endpoint}/health", timeout=5)
    store = EtcdStore(str(tmp_path / "r.db"), EventBus(), settings)
    try:
        net = store.create_network({"name": "authed"})
        assert store.get_network(net["id"])["name"] == "authed"
    finally:
        store.close()
    assert PASSWORD not in repr(settings)


def test_a_member_certificate_from_another_ca_is_refused(
    tmp_path: Path, auth_cluster: Any, settings: EtcdSettings
) -> None:
    """Certificate verification is on: trusting another ovs-pki CA (not the one that signed
    the members' certificates), the TLS handshake fails before the password is sent, and the
    store does not start (a client that verified nothing would have authenticated)."""
    from lab.pki import Pki

    other = Pki.create(tmp_path / "other", hosts=[])
    host, port = settings.endpoints[0]
    with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        requests.get(f"https://{host}:{port}/health", timeout=5, verify=other.controller_ca)
    untrusted = dataclasses.replace(settings, ca_cert=other.controller_ca, call_timeout_s=2.0)
    with pytest.raises(EtcdUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        EtcdLog(untrusted).head()


def test_an_expired_or_invalid_token_is_renewed_once_transparently(settings: EtcdSettings) -> None:
    """etcd forgets a token unused for --auth-token-ttl (or on a restart): the call is sent
    again with a new token; the caller sees nothing (old code: 401 on every call after it).
    On one member: with several, transactions go to the leader, whose client has a token of
    its own."""
    log = EtcdLog(dataclasses.replace(settings, endpoints=settings.endpoints[:1]))
    auth = _auth(log)
    assert log.create({"epoch": "e", "schema": 1})
    old = auth._token
    time.sleep(2.5)  # > the 1 s TTL plus etcd's 1 s expiry check
    host, port = settings.endpoints[0]
    gone = requests.post(
        f"https://{host}:{port}/v3/kv/range", json={"key": _b64("x")},
        headers={"Authorization": old}, timeout=5, verify=settings.ca_cert,
    )  # fmt: skip
    assert gone.status_code == 401  # etcd really forgot it
    assert log.head() == 0
    assert auth.authentications == 2 and auth._token != old
    auth._token = "forged.1"  # a token etcd never issued
    assert log.append(0, b"entry")
    assert auth.authentications == 3


def test_a_watch_whose_token_expired_resumes_with_a_new_one(settings: EtcdSettings) -> None:
    """A quiet watch is opened again after idle_s (here 3 s) with the token it had, which etcd
    forgot meanwhile (1 s TTL): etcd cancels that stream (HTTP 200, "invalid auth token");
    the next one authenticates again instead of being canceled forever (old code).  On one
    member: with several the watch resumes on the next, whose first token is new anyway."""
    log = EtcdLog(dataclasses.replace(settings, endpoints=settings.endpoints[:1]))
    assert log.create({"epoch": "e", "schema": 1})
    entries: list[int] = []
    watch = LogWatch(log, 1, lambda: None, lambda seq, _: entries.append(seq), idle_s=3)
    try:
        auth = _auth(log, first_pass=False)
        deadline = time.monotonic() + 30
        while watch.resyncs == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert watch.resyncs >= 1  # a stream ended: the one refused
        assert log.append(0, b"one")
        while not entries and time.monotonic() < deadline:
            time.sleep(0.05)
        assert entries == [1] and watch.alive and auth.authentications >= 2
    finally:
        watch.stop()


def test_a_wrong_password_or_none_is_one_clear_line_without_the_password(
    tmp_path: Path, settings: EtcdSettings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = dataclasses.replace(settings, password=PASSWORD + "x")
    with pytest.raises(StoreUnavailable) as bad:
        EtcdStore(str(tmp_path / "a.db"), EventBus(), wrong)
    message = str(bad.value)
    assert f"etcd user {USER!r}: authentication failed" in message and "\n" not in message
    with pytest.raises(EtcdUnavailable) as none:
        EtcdLog(dataclasses.replace(settings, user="", password="")).head()
    assert "requires authentication: set etcd_user and etcd_password_file" in str(none.value)
    assert not none.value.maybe_sent
    for text in (message, str(none.value), caplog.text):
        assert PASSWORD not in text


def test_credentials_are_never_sent_over_plain_http() -> None:
    """Settings built without `config` (no Settings.validate): a user on a member reached over
    plain http gets one clear error naming etcd_tls_ca, and the member (a socket that records
    what it is sent) gets nothing (old code: the password in the authenticate request)."""
    import contextlib
    import socket
    import threading

    received: list[bytes] = []
    done = threading.Event()

    def record(server: socket.socket) -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    received.append(conn.recv(65536))

    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.1)
        recorder = threading.Thread(target=record, args=(server,), daemon=True)
        recorder.start()
        settings = EtcdSettings(
            (server.getsockname()[:2],), prefix="/t/", timeout_s=0.5, attempt_timeout_s=0.2,
            call_timeout_s=1.0, user=USER, password=PASSWORD,
        )  # fmt: skip
        try:
            with pytest.raises(EtcdUnavailable) as refused:
                EtcdLog(settings).head()
        finally:
            done.set()
            recorder.join(5)
    message = str(refused.value)
    assert "refusing to send credentials over plain http" in message and "etcd_tls_ca" in message
    assert PASSWORD not in message and not refused.value.maybe_sent
    assert received == []


def _password_file(tmp_path: Path, mode: int) -> Path:
    path = tmp_path / "etcd-password"
    path.write_text(PASSWORD + "\n")
    path.chmod(mode)
    return path


def test_the_password_comes_from_a_private_file(tmp_path: Path) -> None:
    private = _password_file(tmp_path, 0o600)
    s = config.load(
        config.argparse.Namespace(
            store="etcd://127.0.0.1:1", etcd_user=USER, etcd_password_file=str(private),
            etcd_tls_ca=certifi.where(),  # any CA file: nothing connects
        ),
        environ={},
    )
    assert s.etcd is not None and (s.etcd.user, s.etcd.password) == (USER, PASSWORD)
    assert PASSWORD not in repr(s) + repr(s.etcd)
    private.chmod(0o644)
    with pytest.raises(config.ConfigError, match=r"password_file: .* readable or writable by"):
        config.load(config.argparse.Namespace(), environ={
            "TENANTNET_STORE": "etcd://127.0.0.1:1", "TENANTNET_ETCD_USER": USER,
            "TENANTNET_ETCD_PASSWORD_FILE": str(private),
            "TENANTNET_ETCD_TLS_CA": certifi.where()})  # fmt: skip
    with pytest.raises(config.ConfigError, match="etcd_user and etcd_password_file go together"):
        config.load(config.argparse.Namespace(store="etcd://127.0.0.1:1", etcd_user=USER),
                    environ={})  # fmt: skip


def test_store_copy_takes_the_credentials(
    tmp_path: Path, auth_cluster: Any, settings: EtcdSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    from controller.cli import main

    source = str(tmp_path / "one.db")
    single = Store(source, EventBus())
    net = single.create_network({"name": "copied"})
    single.close()
    private = _password_file(tmp_path, 0o600)
    creds = ("--etcd-prefix", settings.prefix, "--etcd-user", USER,
             "--etcd-tls-ca", auth_cluster.ca)  # fmt: skip
    assert main(["store-copy", source, auth_cluster.url, *creds,
                 "--etcd-password-file", str(private)]) == 0  # fmt: skip
    wrong = tmp_path / "wrong"
    wrong.write_text("nope")
    wrong.chmod(0o600)
    back = str(tmp_path / "back.db")
    assert main(["store-copy", auth_cluster.url, back, *creds,
                 "--etcd-password-file", str(wrong)]) == 1  # fmt: skip
    assert f"etcd user {USER!r}: authentication failed" in capsys.readouterr().err
    assert main(["store-copy", auth_cluster.url, back, *creds,
                 "--etcd-password-file", str(private)]) == 0  # fmt: skip
    restored = Store(back, EventBus())
    assert restored.get_network(net["id"]) == net
    restored.close()


def test_a_401_is_read_only_as_far_as_the_token_check_needs() -> None:
    """A 401 announcing 100 MB (a stream or not): the hook reads the first HEAD_BYTES to look
    for "invalid auth token", not the whole body (``response.text``); what it read stays the
    response's content.  No etcd needed."""
    import io

    from urllib3.response import HTTPResponse

    from controller.store import etcd_auth

    class Body(io.BytesIO):
        served = 0

        def read(self, size: int | None = -1) -> bytes:
            data = super().read(size)
            Body.served += len(data)
            return data

    body = Body(b"u" * 100_000_000)
    response = requests.Response()
    response.status_code = 401
    response.raw = HTTPResponse(body=body, status=401, preload_content=False)
    response.request = requests.Request("POST", "http://127.0.0.1:1/v3/watch").prepare()
    auth = TokenAuth(requests.Session(), USER, PASSWORD, 1.0)
    assert auth._on_response(response, stream=True) is response
    assert Body.served <= 64 * 1024  # old code: 100 MB
    assert response.content == b"u" * etcd_auth.HEAD_BYTES


def test_a_401_cut_off_mid_body_is_a_connection_error() -> None:
    """A member that dies while sending its 401: urllib3's error left the hook unwrapped
    (not a requests error), so no handler of the store's calls took it, the call did not go on
    to the next member, and a write left the replica's connection inside its transaction.
    Now it is the connection error it is.  No etcd needed."""
    import io

    import urllib3
    from urllib3.response import HTTPResponse

    class Cut(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            raise urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead")

    response = requests.Response()
    response.status_code = 401
    response.raw = HTTPResponse(body=Cut(), status=401, preload_content=False)
    response.request = requests.Request("POST", "http://127.0.0.1:1/v3/kv/txn").prepare()
    auth = TokenAuth(requests.Session(), USER, PASSWORD, 1.0)
    with pytest.raises(requests.exceptions.ConnectionError, match="cut off"):
        auth._on_response(response)


def test_threads_waiting_on_a_failed_authentication_fail_at_once_not_in_turn() -> None:
    """A member that forgot its tokens during a quorum loss cannot authenticate anyone (a Raft
    proposal): every request to it wanted a new token, and each waiting thread tried again
    in turn under the lock, so the k-th waited k timeouts (10 threads at 0.3 s: the last 3 s,
    far past the call's bound).  Now those that waited on a failure fail at once; once the
    timeout has passed, the next request tries again.  No etcd needed."""
    import threading

    from etcd3gw import exceptions as etcd_errors

    posts: list[float] = []

    class Hanging:  # authenticate answers nothing (no quorum)
        def post(self, url: str, json: Any = None, timeout: float = 0) -> Any:
            posts.append(time.monotonic())
            time.sleep(timeout)
            raise requests.exceptions.ReadTimeout("timed out")

    auth = TokenAuth(Hanging(), USER, PASSWORD, timeout_s=0.3)  # type: ignore[arg-type]
    waits: list[float] = []

    failures: list[Exception] = []

    def one() -> None:
        began = time.monotonic()
        try:
            auth._renew("https://m1:2379/v3/kv/txn", stale="")
        except etcd_errors.Etcd3Exception as exc:
            failures.append(exc)
        waits.append(time.monotonic() - began)

    threads = [threading.Thread(target=one) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(failures) == 10 and len(posts) == 1 and max(waits) < 0.6, waits
    time.sleep(0.3)
    with pytest.raises(etcd_errors.Etcd3Exception):
        auth._renew("https://m1:2379/v3/kv/txn", stale="")
    assert len(posts) == 2
