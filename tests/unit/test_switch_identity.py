"""A switch is who its certificate says (controller/dataplane/admission.py, controller/tls.py):
the certificate's CN must name the host exactly.  tests/unit/test_tls.py covers the handshake,
the CN extraction and the app; these pin the comparison itself."""

from __future__ import annotations

from controller.dataplane.admission import Admission

HV1 = {"id": "hv1", "ovsdb": "tcp:192.0.2.1:6640"}


def test_a_certificate_must_name_the_host_exactly_not_a_prefix_of_it() -> None:
    """Host ids may share a prefix (hv1, hv10, hv1-b): hv10's certificate is no proof of hv1,
    nor hv1's of hv10.  Only the whole CN, or the CN without ovs-pki's `` id:<uuid>``, names
    a host."""
    adm = Admission(tls=True)
    adm.set_host(1, HV1)
    adm.set_host(10, {"id": "hv10", "ovsdb": "tcp:192.0.2.10:6640"})
    for cn in ("hv10 id:abc", "hv10", "hv1-b id:abc", "hv1 id:abc id:x", "hv1x", "hv"):
        assert "does not name host hv1" in (adm.check(1, "192.0.2.1", cn) or ""), cn
    assert "does not name host hv10" in (adm.check(10, "192.0.2.10", "hv1 id:abc") or "")
    assert adm.check(1, "192.0.2.1", "hv1") is None
    assert adm.check(10, "192.0.2.10", "hv10 id:abc") is None


def test_with_tls_the_address_proves_nothing() -> None:
    """With TLS the certificate decides alone: the host's own management address with another
    host's certificate is refused."""
    adm = Admission(tls=True)
    adm.set_host(1, HV1)
    assert adm.check(1, "192.0.2.1", "hv2 id:abc") is not None
    assert adm.check(1, "192.0.2.1", None) is not None
