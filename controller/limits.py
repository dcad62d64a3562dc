"""Process limits raised at start, so that load exhausts a cap we chose rather than the kernel's.

Every switch connection, API client, OVSDB session and the store hold a file descriptor.  Debian
starts services with a soft ``RLIMIT_NOFILE`` of 1,024 (a hard one much higher); at the soft limit
``accept`` fails with ``EMFILE`` and, before this module, killed os-ken's accept loop for good.
`raise_fd_limit` lifts the soft limit to the hard one (bounded by `FD_TARGET`), and the listeners
size their connection caps from the result (`listener_budget`): ``FD_RESERVE`` descriptors stay
for the rest of the process (the store, OVSDB sessions, modules imported late), and the REST API
and the OpenFlow listener get half of the remainder each, so neither can starve the other or the
process: with a limit of 100, idle HTTP clients once made a lazy import fail during start-up.
"""

from __future__ import annotations

import logging
import resource

LOG = logging.getLogger(__name__)

FD_TARGET = 65536  # plenty for thousands of switches and clients; more only costs kernel memory
FD_RESERVE = 64  # descriptors never given to connections (store, OVSDB, late imports, logs)
LISTENERS = 2  # the REST API and the OpenFlow listener


def listener_budget(fd_limit: int) -> int:
    """How many connections one listener may hold under the open-files limit ``fd_limit``."""
    return max(1, (fd_limit - FD_RESERVE) // LISTENERS)


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
