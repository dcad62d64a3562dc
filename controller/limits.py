"""Process limits raised at start, so that load exhausts a cap we chose rather than the kernel's.

Every switch connection, API client, OVSDB session and the store hold a file descriptor.  Debian
starts services with a soft ``RLIMIT_NOFILE`` of 1,024 (a hard one much higher); at the soft limit
``accept`` fails with ``EMFILE`` and, before this module, killed os-ken's accept loop for good.
`raise_fd_limit` lifts the soft limit to the hard one (bounded by `FD_TARGET`), and the listeners
size their connection caps from the result (see `southbound.ofp_server.install`).
"""

from __future__ import annotations

import logging
import resource

LOG = logging.getLogger(__name__)

FD_TARGET = 65536  # plenty for thousands of switches and clients; more only costs kernel memory


def raise_fd_limit(target: int = FD_TARGET) -> int:
    """Raise the soft open-files limit towards ``target`` (never above the hard limit, never
    lower than it is).  Returns the soft limit in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(target, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            LOG.debug("open files limit raised from %d to %d", soft, want)
            soft = want
        except (ValueError, OSError) as exc:
            LOG.warning("could not raise the open files limit from %d: %s", soft, exc)
    if soft != resource.RLIM_INFINITY and soft < 1024:
        LOG.warning(
            "open files limit is only %d (hard limit %d): connection caps are lowered to fit",
            soft,
            hard,
        )
    return FD_TARGET if soft == resource.RLIM_INFINITY else int(soft)
