"""The etcd client's HTTP session (`etcd_log._session`): each call's TLS settings, timeout and
errors, and the pooled connection's TCP_NODELAY."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest
import requests
import urllib3
from requests.adapters import BaseAdapter

from controller.store.etcd_log import EtcdLog, EtcdUnavailable
from controller.store.etcd_members import EtcdMembership
from controller.store.etcd_settings import EtcdSettings


class Recorder(BaseAdapter):
    """An adapter that answers every request itself and records how it was asked."""

    def __init__(self, body: dict[str, Any] | None = None, error: Exception | None = None):
        super().__init__()
        self.body = body if body is not None else {"header": {"revision": "1"}}
        self.error = error
        self.sent: list[tuple[requests.PreparedRequest, dict[str, Any]]] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        self.sent.append((request, kwargs))
        if self.error is not None:
            raise self.error
        response = requests.Response()
        response.status_code = 200
        response._content = json.dumps(self.body).encode()
        response.request = request
        return response

    def close(self) -> None:
        pass


def tls_log(adapter: Recorder) -> EtcdLog:
    settings = EtcdSettings(
        (("etcd1.example", 2379), ("etcd2.example", 2379)),
        ca_cert="/etc/tn/ca.pem", cert="/etc/tn/cert.pem", key="/etc/tn/key.pem",
        timeout_s=2.0, attempt_timeout_s=0.5,
    )  # fmt: skip
    log = EtcdLog(settings)
    for clients in log._passes:
        for client in clients:
            client.session.mount("https://", adapter)
    return log


def test_each_call_carries_tls_settings_and_short_timeout() -> None:
    adapter = Recorder({"kvs": [{"key": "eA==", "value": "NDI="}]})
    assert tls_log(adapter).head() == 42
    [(request, kwargs)] = adapter.sent
    assert request.url == "https://etcd1.example:2379/v3/kv/range"
    assert json.loads(request.body or b"")["key"]  # etcd3gw's body, base64 key
    assert kwargs["verify"] == "/etc/tn/ca.pem"
    assert kwargs["cert"] == ("/etc/tn/cert.pem", "/etc/tn/key.pem")
    assert kwargs["timeout"] == 0.5  # the short attempt first
    assert kwargs["proxies"] == {}


def test_transaction_body_and_a_refused_connection_still_map_to_etcd3gw_errors() -> None:
    adapter = Recorder({"succeeded": True})
    log = tls_log(adapter)
    assert log.append(0, b"entry")
    request, _ = adapter.sent[0]
    assert request.url is not None and request.url.endswith("/v3/kv/txn")
    assert len(json.loads(request.body or b"")["success"]) == 2
    adapter.error = _refused()
    with pytest.raises(EtcdUnavailable) as caught:
        log.head()
    assert caught.value.maybe_sent is False  # refused everywhere: nothing reached a member
    adapter.error = requests.exceptions.ReadTimeout("slow")
    with pytest.raises(EtcdUnavailable) as caught:
        log.head()
    assert caught.value.maybe_sent is True


def _refused() -> requests.exceptions.ConnectionError:
    """What requests raises for a refused connection (its urllib3 reason inside)."""
    reason = urllib3.exceptions.NewConnectionError(None, "[Errno 111] Connection refused")
    return requests.exceptions.ConnectionError(
        urllib3.exceptions.MaxRetryError(None, "/v3/kv/range", reason)  # type: ignore[arg-type]
    )


class _Unavailable(Recorder):
    """A member that answers 503, as etcd does to a proposal that timed out."""

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        response = super().send(request, **kwargs)
        response.status_code = 503
        response._content = b'{"error": "etcdserver: request timed out", "code": 14}'
        return response


def test_a_reset_or_a_503_may_have_reached_the_member_a_refusal_did_not() -> None:
    """A write whose every member failed is answered "may still be committed" unless none can
    have read it: a connection reset or aborted after the request went out, or etcd's 503 for
    a proposal that timed out, used to be reported as "nothing was changed"."""
    aborted = requests.exceptions.ConnectionError(
        urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104))
    )
    for adapter, sent in (
        (Recorder(error=_refused()), False),
        (Recorder(error=aborted), True),
        (_Unavailable(), True),
    ):
        with pytest.raises(EtcdUnavailable) as caught:
            tls_log(adapter).append(0, b"entry")
        assert caught.value.maybe_sent is sent, adapter


def test_pooled_connection_sends_without_nagle(etcd_settings: EtcdSettings) -> None:
    """A call's header and body go out in two writes: without TCP_NODELAY on the kept-alive
    connection the second would wait for the member's delayed ACK (up to 40 ms a call)."""
    log = EtcdLog(etcd_settings)
    log.head()
    client = log._passes[0][log.current_member]
    url = client.get_url("/kv/range")
    pools = client.session.get_adapter(url).poolmanager.pools
    kept = [
        conn
        for key in pools.keys()  # noqa: SIM118 (urllib3's container is not iterable)
        for conn in list(pools[key].pool.queue)
        if conn is not None and conn.sock is not None
    ]
    assert kept, "the call's connection is kept in the pool"
    assert all(c.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for c in kept)


def test_instances_first_member_follows_their_id() -> None:
    """Instances spread over the members (each call first goes to the member picked by the
    instance's id), instead of all asking the first member."""
    firsts = {}
    for member_id in ("ctl-a", "ctl-b", "ctl-c", "ctl-d", "ctl-e"):
        adapter = Recorder({"kvs": [{"key": "eA==", "value": "Nw=="}]})
        settings = EtcdSettings(
            (("etcd0.example", 2379), ("etcd1.example", 2379), ("etcd2.example", 2379))
        )
        log = EtcdLog(settings, spread_by=member_id)
        for clients in log._passes:
            for client in clients:
                client.session.mount("http://", adapter)
        assert log.head() == 7
        [(request, _)] = adapter.sent
        firsts[member_id] = request.url
        assert EtcdLog(settings, spread_by=member_id).current_member == log.current_member
        assert EtcdMembership(settings, member_id)._log.current_member == log.current_member
    assert len(set(firsts.values())) > 1, firsts
    assert EtcdLog(settings).current_member == 0  # no id (a migration): the first member


def test_a_leader_that_fails_is_not_asked_first_any_more() -> None:
    """A transaction sent to the leader first that another member answers (the leader is
    gone) stops the preference: the next ones go to the member that answered, not through a
    dead member's timeout each, until the next election's term starts a new search."""
    dead = Recorder(error=requests.ConnectionError("refused"))
    alive = Recorder({"succeeded": True, "header": {"raft_term": "5"}})
    log = EtcdLog(EtcdSettings((("etcd0.example", 2379), ("etcd1.example", 2379))))
    for clients in log._passes:
        clients[0].session.mount("http://", dead)
        clients[1].session.mount("http://", alive)
    log._leader, log._leader_term = 0, 5
    assert log.append(0, b"entry")
    assert log._leader is None and log.current_member == 1
    dead.sent.clear()
    assert log.append(1, b"entry")
    assert dead.sent == [] and len(alive.sent) == 2


def test_a_rank_never_sends_calls_back_to_a_member_that_just_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three nodes each run an instance and an etcd member; node 2 dies (member 1 with it),
    and the ranks change as its lease expires.  The first call sent to member 1 by the new
    rank fails over to another; later changes of the members (each re-spreads) leave the log
    there instead of sending every call through the dead member first again, until the
    failure is old (`SPREAD_AVOID_S`)."""
    from etcd3gw import exceptions as etcd_errors

    from controller.membership import MemberView
    from controller.store import etcd_log

    tried: list[int] = []

    class Member:
        def __init__(self, i: int) -> None:
            self.i, self.host, self.port = i, f"m{i}", 2379

        def get(self, key: str, **kw: Any) -> list[bytes]:
            tried.append(self.i)
            if self.i == 1:
                raise etcd_errors.Etcd3Exception("timed out")
            return [b"7"]

    log = EtcdLog(EtcdSettings((("m0", 1), ("m1", 1), ("m2", 1))), spread_by="ctl-3")
    log._clients = [Member(i) for i in range(3)]
    log._passes = [[Member(i) for i in range(3)], log._clients]
    members = EtcdMembership.__new__(EtcdMembership)
    members._spread, members.on_change = [log], None
    members.view = MemberView("ctl-3", ("ctl-1", "ctl-2", "ctl-3"))
    log.spread(2)
    assert log.head() == 7 and tried == [2]
    for i in range(3):  # ctl-2 gone: ctl-3's rank is 1, the dead member's
        tried.clear()
        members._set(MemberView("ctl-3", ("ctl-1", "ctl-3"), 10 + i, (("ctl-3", f"t{i}"),)))
        assert log.head() == 7
        assert tried == ([1, 2] if i == 0 else [2]), (i, tried)
    monkeypatch.setattr(etcd_log, "SPREAD_AVOID_S", 0.0)  # the failure is old now
    log.spread(1)
    assert log.current_member == 1


def test_the_spread_comes_back_after_an_outage_without_a_membership_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """During an election or a quorum loss every member fails a call for a moment, and the
    rank's member is skipped while that is recent; once it is old (and at once for a member
    that answered since), the next renewal points the log at the rank's member again, although
    the members did not change (they rejoin within the avoid time).  Re-spread only on a change
    of the members, every instance stayed wherever its failover had left it."""
    from controller.membership import MemberView
    from controller.store import etcd_log

    class Member:
        def __init__(self, i: int) -> None:
            self.i, self.host, self.port = i, f"m{i}", 2379

        def get(self, key: str, **kw: Any) -> list[bytes]:
            return [b"7"]

    log = EtcdLog(EtcdSettings((("m0", 1), ("m1", 1), ("m2", 1))), spread_by="ctl-2")
    log._clients = [Member(i) for i in range(3)]
    log._passes = [log._clients]
    members = EtcdMembership.__new__(EtcdMembership)
    members._spread, members.on_change = [log], None
    view = MemberView("ctl-2", ("ctl-1", "ctl-2", "ctl-3"), 5)
    members.view = view
    now = time.monotonic()
    log._failed_at = {0: now, 1: now, 2: now}  # the outage: every member failed a call
    log._current = 2  # where the failover left it
    members._set(view)
    assert log.current_member == 2  # its rank's member failed just now: not taken yet
    monkeypatch.setattr(etcd_log, "SPREAD_AVOID_S", 0.0)  # the failures are old now
    members._set(MemberView("ctl-2", view.members, 6))  # a renewal: the same members
    assert log.current_member == 1
    monkeypatch.setattr(etcd_log, "SPREAD_AVOID_S", 3600.0)  # recent again, for any stamp
    log._current = 0
    assert log.head() == 7  # member 0 answers: its failure is forgotten at once
    assert 0 not in log._failed_at and 2 in log._failed_at
    log._current = 2
    members._set(MemberView("ctl-2", ("ctl-2", "ctl-3"), 7))  # rank 0: member 0, answered
    assert log.current_member == 0
    members._set(MemberView("ctl-2", ("ctl-1", "ctl-2", "ctl-3"), 8))  # rank 1: still avoided
    assert log.current_member == 0
