"""GET /tenantnet/ui over HTTP: the page and its two files are served from the package, open
even when the API wants a token (they hold no data; the API calls of the page still need it),
and locked to this origin by their Content-Security-Policy.  The page itself is tested in a
real browser in tests/integration/test_ui.py."""

from __future__ import annotations

import re

from tests.unit.conftest import ClientFactory


def test_the_page_is_open_but_the_data_it_reads_is_not(make_client: ClientFactory) -> None:
    client = make_client(auth_token="s3cret")
    page = client.get("/tenantnet/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    scripts = re.findall(r'src="([^"]+)"', page.text) + re.findall(r'href="(/[^"]+)"', page.text)
    assert sorted(scripts) == ["/tenantnet/ui/app.js", "/tenantnet/ui/style.css"]
    for path in scripts:
        asset = client.get(path)
        assert asset.status_code == 200 and asset.content
    assert "fetch(" in client.get("/tenantnet/ui/app.js").text
    for data in ("/v2.0/hosts", "/v2.0/ports", "/tenantnet/ui/../../v2.0/hosts"):
        assert client.get(data).status_code == 401, data
    assert client.get("/tenantnet/ui/other.js").status_code == 401  # only the page's files


def test_the_page_may_talk_to_its_own_origin_only(make_client: ClientFactory) -> None:
    csp = make_client().get("/tenantnet/ui").headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    for name in ("script-src", "style-src", "connect-src"):
        assert directives[name] == "'self'", name
    assert "http" not in csp  # no other host anywhere
