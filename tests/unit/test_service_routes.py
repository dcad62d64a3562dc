"""Start-up builds every API route, so the first request after a restart builds none.

FastAPI 0.16x builds an included router's routes (dependencies, pydantic models; ~0.2 s of CPU
for ours) at the first request matched against it.  After a controller restart that request
(an orchestrator's, or a status poll) would compete with the hosts being reconciled;
`controller.service._build_routes` does it at start-up instead.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import routing
from fastapi.testclient import TestClient

from controller.api import ApiSettings, create_app
from controller.service import _build_routes
from controller.store import Store

if not hasattr(routing, "_EffectiveRouteContext"):
    pytest.skip("this FastAPI builds its routes when they are added", allow_module_level=True)


def _count_route_builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    built = [0]
    original = routing._EffectiveRouteContext.from_api_route.__func__  # type: ignore[attr-defined]

    def counting(cls: Any, *args: Any, **kwargs: Any) -> Any:
        built[0] += 1
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(routing._EffectiveRouteContext, "from_api_route", classmethod(counting))
    return built


@pytest.mark.parametrize("prebuilt", [False, True], ids=["lazy", "built-at-start"])
def test_first_request_builds_no_route_after_start_up(
    store: Store, monkeypatch: pytest.MonkeyPatch, prebuilt: bool
) -> None:
    app = create_app(store, ApiSettings())
    app.add_api_route("/tenantnet/status", lambda: {}, methods=["GET"])  # matched last
    built = _count_route_builds(monkeypatch)
    if prebuilt:
        assert _build_routes(app.router.routes) > 0
        assert built[0] > 0
        built[0] = 0
    with TestClient(app) as client:
        assert client.get("/tenantnet/status").status_code == 200
        assert client.get("/v2.0/networks").status_code == 200
    assert (built[0] == 0) == prebuilt, f"{built[0]} routes built by the first requests"
