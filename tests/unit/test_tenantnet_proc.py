"""The lab's controller process (`lab.tenantnet_proc`) talks to the process it started.

Its API port is chosen free (`free_port`) and bound by the child a second later; on a machine
where other labs start etcd members and controllers, something else can take the port in
between.  The start then answered from that server: an etcd member's text 404 for ``GET /``
ended the fixture in a ``JSONDecodeError``, another controller's JSON made the test drive the
wrong controller.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import lab.tenantnet_proc as tp


def answering_server(status: int, body: bytes, content_type: str) -> ThreadingHTTPServer:
    """A loopback HTTP server answering every GET and POST with this answer (in a thread;
    ``shutdown`` and ``server_close`` it)."""

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(params=["etcd", "controller"])
def squatter(request: pytest.FixtureRequest) -> Iterator[ThreadingHTTPServer]:
    """What took the port: an etcd member (text 404) or another controller (JSON)."""
    if request.param == "etcd":
        server = answering_server(404, b"404 page not found\n", "text/plain; charset=utf-8")
    else:
        server = answering_server(200, b'{"versions": []}', "application/json")
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_an_answer_that_is_not_json_is_an_api_error() -> None:
    server = answering_server(404, b"404 page not found\n", "text/plain")
    try:
        api = tp.Api(f"http://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(tp.ApiError) as err:
            api.request("GET", "/")
        assert err.value.status == 404 and "404 page not found" in err.value.body
    finally:
        server.shutdown()
        server.server_close()


def test_a_start_on_a_port_taken_meanwhile_moves_to_another(
    squatter: ThreadingHTTPServer, tmp_path: Path
) -> None:
    taken = squatter.server_address[1]
    proc = tp.TenantnetProcess(tmp_path / "c", f"127.0.0.1:{tp.free_port()}", api_port=None)
    proc.api_port = taken  # as if free_port had handed out the port the squatter then took
    proc.api.base = f"http://127.0.0.1:{taken}"
    try:
        proc.start(timeout=60)
        assert proc.api_port != taken
        assert tp.listens_on(proc.proc.pid, proc.api_port)  # type: ignore[union-attr]
        # the controller answers, not the squatter: its status always has the process's CPU
        # (the data plane's counters only once the data plane is up, which start() does not
        # wait for: reading them here failed a CI run on a loaded machine)
        assert "cpu_s" in proc.api.status()
        assert "cannot listen" in proc.log_tail(200)  # the first start met the squatter
    finally:
        proc.stop()
