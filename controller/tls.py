"""TLS for the three channels, and what a peer's certificate says about who it is.

The certificates come from OVS's own PKI tool, ``ovs-pki`` (see the README): a switch's
certificate is made with ``ovs-pki req+sign <host id> switch``, whose subject CN is
``"<host id> id:<uuid>"`` (or just ``"<host id>"`` with ``ovs-pki -u``).  That CN is what ties
an OpenFlow connection to a registered host: a switch is who its certificate says, not what
datapath id it claims.

The TLS itself is done by the libraries (os-ken's listener, python-ovs's SSL stream, uvicorn);
this module only checks the files early, so that a wrong path or a key that does not match its
certificate stops the start with a message naming the setting, and reads peer identities.
"""

from __future__ import annotations

import ssl
from typing import Any

ID_SUFFIX = " id:"  # ovs-pki appends " id:<uuid>" to the CN unless run with -u


class TlsFileError(ValueError):
    """A key, certificate or CA file that cannot be used; the message names the setting."""


def check_files(channel: str, key: str, cert: str, ca: str = "") -> None:
    """Load the files the way the listener will, so that a broken set fails at start-up."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsFileError(
            f"{channel}_tls_cert/{channel}_tls_key: {cert} with {key} unusable ({exc})"
        ) from exc
    if ca:
        check_ca(channel, ca)


def check_ca(channel: str, ca: str) -> None:
    """A CA file must hold at least one certificate OpenSSL can load (not a key, not empty)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(ca)
    except (OSError, ssl.SSLError) as exc:
        raise TlsFileError(f"{channel}_tls_ca: {ca} unusable ({exc})") from exc


def host_of_cn(cn: str) -> str:
    """The host id an ovs-pki certificate names: its CN without the ``" id:..."`` suffix."""
    head, sep, _ = cn.rpartition(ID_SUFFIX)
    return head if sep else cn


def peer_common_name(sock: Any) -> str | None:
    """The verified peer certificate's subject CN, or None (plain TCP, no certificate, or a
    subject with no CN or with several).

    Only meaningful on a socket whose handshake verified the peer against a CA (os-ken's listener
    with ``ca_certs`` requires that); ``getpeercert()`` is empty otherwise.

    A subject with several CNs names no one host: ``ovs-pki sign`` copies a request's subject as
    it is, so a request made with ``-subj ".../CN=hv2/CN=hv1"`` comes back signed with both, and
    which one "is" the host depends on who reads it (``openssl x509 -subject`` lists both; RFC
    6125 takes the last, the first was taken here).  Such a certificate proves no identity: it
    is treated like one without a CN, and admission refuses it for every host.
    """
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return None
    try:
        cert = getpeercert()
    except (OSError, ValueError):
        return None
    names = [
        str(value)
        for rdn in (cert or {}).get("subject", ())
        for name, value in rdn
        if name == "commonName"
    ]
    return names[0] if len(names) == 1 else None


def configure_ovsdb_client(key: str, cert: str, ca: str) -> None:
    """Key, certificate and CA for every ``ssl:`` OVSDB connection of this process.

    python-ovs keeps them process-wide on its Stream class; its SSL stream verifies the server
    against the CA (TLS 1.2 or later).
    """
    from ovs.stream import Stream

    Stream.ssl_set_private_key_file(key)
    Stream.ssl_set_certificate_file(cert)
    Stream.ssl_set_ca_cert_file(ca)


def ovsdb_peer_mismatch(ovsdb_target: str, sock: Any, host_id: str) -> str | None:
    """Why an OVSDB session's server is not host ``host_id`` (None: it is, or the target is
    not ``ssl:``).  python-ovs checks only that the server's certificate is signed by the CA
    (``check_hostname`` off): any hypervisor's certificate passed, so one host's server - or
    one on the path holding any switch certificate - could answer for another.  Its
    certificate must name the host, as the switch's does on OpenFlow (`host_of_cn`)."""
    if not ovsdb_target.startswith("ssl:"):
        return None
    cn = peer_common_name(sock)
    if cn is not None and host_of_cn(cn) == host_id:
        return None
    named = f"names {host_of_cn(cn)!r}" if cn is not None else "names no host"
    return f"its certificate {named}, not host {host_id!r}"
