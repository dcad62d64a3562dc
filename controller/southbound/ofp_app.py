"""The os-ken application: OpenFlow 1.3 sessions with every integration bridge.

It knows nothing about tenants.  A connection becomes a host's session only when the
`SwitchListener` (the data plane) admits it - the certificate or address proves the host (see
dataplane/admission.py) - and a live session is never displaced by a second connection.  It
tells the listener when a switch is connected *and* its current tenantnet flows and groups have
been read back, and it applies a `FlowDiff` to a switch as an ordered batch of messages (one ONF
bundle unless the diff only adds) closed by a barrier, calling back when the switch confirmed it.
Because the first thing it does with a (re)connected switch is read its state instead of
flushing it, a controller restart sends nothing when nothing changed.

Every barrier is answered within ``barrier_timeout_s``: by the switch, or by a timeout (a switch
that answers echoes but never barriers must not hold port statuses for good).  The callback says
why a batch was not confirmed: ``"timeout"``, ``"rejected"`` (the switch sent errors) or
``"disconnected"``.  A switch that does not answer the read-back of its flows in time is
disconnected; whether a silent switch is alive at all is southbound/ofp_server's business.

An error reply names the message it answers by xid.  Each switch keeps the last
``RECENT_MESSAGES`` messages sent to it (what was asked, of which rule or group), so the log says
which rule of which table the switch refused, once per distinct failure and throttle interval
(like Faucet's ``oferror``).  Inside a bundle, the switch answers a refused flow-mod with the xid
of its bundle-add (os-ken gives the inner message the same xid) and then refuses the commit; only
a refused bundle open/commit itself (a switch without ONF bundles) turns bundles off.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import socket
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import (
    CONFIG_DISPATCHER,
    DEAD_DISPATCHER,
    MAIN_DISPATCHER,
    set_ev_cls,
)
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from controller import tls
from controller.metrics import Metrics
from controller.southbound import ofp_codec as codec
from controller.southbound.ofp_server import Write
from controller.southbound.packet_in import (
    MAX_FRAME,
    PacketIn,
    PacketInHandler,
    PacketInQueue,
)
from controller.throttle import Throttle
from flows.diff import FlowDiff
from flows.model import GroupEntry, Rule, Slice
from flows.readable import group_text, rule_text
from flows.tables import COOKIE_BASE, COOKIE_MASK_OURS, is_ours

LOG = logging.getLogger(__name__)

DoneCallback = Callable[..., None]  # (ok: bool, why: str) - why is "" when ok
MAX_HELD = 64
"""Batches held per switch while its MASTER request is unanswered (`TenantnetOfpApp._hold`);
the data plane sends at most one per host and step, and the answer takes a round trip."""
MAX_REFUSALS_REMEMBERED = 1024  # distinct refusals logged once each; the set is then reset
# A proven connection that finds its host's session alive is decided again after this: when a
# switch replaces its own connection (a rewritten target, see ovsdb_host's fast reconnect), the
# old one's end may be seen a moment after the new one's FEATURES.
SECOND_SESSION_WAIT_S = 0.5
REPLY_WAIT_S = 0.2
"""How long the packet-in worker waits for room in a switch's full send queue (os-ken's, 16
buffers) before its replies count as failed: the queue fills for a few ms under load while the
switch reads everything (`LiveDatapath.take_room`: at most its wait budget per switch)."""
FULL_MASK = 0xFFFFFFFFFFFFFFFF
BUNDLE = ofp.ONF_BF_ATOMIC | ofp.ONF_BF_ORDERED
# Messages remembered per switch for naming the cause of an error reply: one whole diff of a
# busy host (errors come back after the batch was written, so the ring must span a batch).
RECENT_MESSAGES = 8192
# The most flows and groups one read collects: a switch that answers with more is not read (a
# read is held in memory until its barrier comes back; a read-back's, until the switch is ready).
MAX_READ_FLOWS = 1_000_000
MAX_GIVEN_UP = 16  # reads given up on whose late replies are still recognised, per switch
BARRIER_THREAD = "barrier-timeouts"  # the one thread that fails unanswered barriers


# One message per FlowDiff entry (see FlowDiff.messages_in_order), and how the log names it.
# Full cookie mask on deletes: a delete only ever removes the flow of the owner that installed it.
_ENCODE: dict[str, Callable[[Any, Any], Any]] = {
    "add_groups": codec.group_add_encoded,
    "mod_groups": codec.group_modify_encoded,
    "add_rules": codec.flow_add_encoded,
    "del_rules": lambda dp, rule: codec.flow_delete_strict_encoded(dp, rule, FULL_MASK),
    "del_groups": codec.group_delete,
}
_VERB = {
    "add_groups": "add group",
    "mod_groups": "modify group",
    "add_rules": "add flow",
    "del_rules": "delete flow",
    "del_groups": "delete group",
}


_REPLIES = {
    ofp_event.EventOFPBarrierReply: "_barrier",
    ofp_event.EventOFPErrorMsg: "_error",
    ofp_event.EventOFPFlowStatsReply: "_flow_stats",
    ofp_event.EventOFPGroupDescStatsReply: "_group_desc",
    ofp_event.EventOFPRoleReply: "_role_reply",
}
"""Replies handled on their switch's receive thread, in order (`TenantnetOfpApp._send_event`):
their handlers, which keep their ``set_ev_cls`` registration (os-ken sends an app only the
events it registered for) and its states (CONFIG and MAIN)."""


class Sent(NamedTuple):
    """What one message sent to a switch asked for, kept to explain an error reply."""

    verb: str  # "add flow", "delete flow", "add group", "commit bundle", "barrier", ...
    subject: Rule | GroupEntry | int | None = None  # the rule, group, group id or bundle id
    bundle: int | None = None  # the bundle that carried it
    at: float = 0.0  # when it was sent (monotonic), for barriers: their round trip

    def text(self) -> str:
        if isinstance(self.subject, Rule):
            what = f"{self.verb} {rule_text(self.subject)}"
        elif isinstance(self.subject, GroupEntry):
            what = f"{self.verb} {group_text(self.subject)}"
        elif self.subject is not None:
            what = f"{self.verb} {self.subject}"
        else:
            what = self.verb
        return what if self.bundle is None else f"{what} (in bundle {self.bundle})"


class SwitchListener(Protocol):
    """What the data plane implements to hear from switches (called on os-ken threads)."""

    def switch_ready(self, dpid: int, installed: Slice) -> None: ...

    def switch_gone(self, dpid: int) -> None:
        """Called with the app's lock held (see `TenantnetOfpApp._state_change`): it must only
        queue, never call back into the app."""
        ...

    def admit(self, dpid: int, peer_ip: str | None, peer_cn: str | None) -> str | None:
        """None if this connection may be the switch of ``dpid``, else why not."""
        ...


TRANSIENT_LOCK_WAIT_S = 0.005
"""How long a packet-in handler's transient rule (a flood's ban) waits for its switch's lock."""

# Numbers OpenFlow sessions: a new number for every admitted connection (see `session_of`).
_SESSION_NUMBERS = itertools.count(1)


@dataclass
class _Read:
    """One `TenantnetOfpApp.read_all` in flight: the replies of its two dumps."""

    on_done: Callable[..., None]
    flows: list[Rule] = field(default_factory=list)
    groups: list[GroupEntry] = field(default_factory=list)
    parts_pending: int = 2
    too_big: bool = False
    given_up: bool = False  # answered without its dumps: late replies are dropped


_DUMP_FAILURES = {
    "timeout": "no answer to",
    "": "a barrier reply before the end of",
    "rejected": "an error in answer to",
}
"""How a read-back's barrier can end with its dumps unanswered (`_dump_answered`), as logged;
"disconnected" and the like end the session anyway."""


@dataclass
class _Switch:
    dp: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    number: int = field(default_factory=lambda: next(_SESSION_NUMBERS))
    flows: list[Rule] = field(default_factory=list)
    groups: list[GroupEntry] = field(default_factory=list)
    installed: Slice | None = None  # flows and groups as last read back (`_dump_part_done`)
    pending_dumps: int = 0
    barriers: dict[int, DoneCallback] = field(default_factory=dict)
    errors: int = 0
    ready: bool = False
    read_back_started: bool = False  # the session's first read-back (see _read_back)
    # Admitted by `admit_early` (the store's hosts at start-up): asked again by `attach`.
    early: bool = False
    bundles: bool = True  # until it refuses a bundle open or commit (see _error)
    # Several controllers: the switch answered this session's MASTER request (ROLE_REPLY).
    # A refused one leaves the session EQUAL, which still gets packet-ins (see _packet_in)
    # and would still take flow-mods: `apply` sends none unless this is True.
    master: bool = False
    # Several controllers: the xid of the MASTER request the switch has not answered yet,
    # and the batches `apply` holds until it does (see `TenantnetOfpApp._hold`).
    role_asked: int | None = None
    held: list[tuple[FlowDiff, DoneCallback]] = field(default_factory=list)
    bundle_id: int = 0
    bundle_in_flight: bool = False
    # xid -> what the message asked, oldest first, at most RECENT_MESSAGES (see _error)
    sent: OrderedDict[int, Sent] = field(default_factory=OrderedDict)
    reads: dict[int, _Read] = field(default_factory=dict)  # dump xid -> its read_all
    # The read-back's two dump requests not fully answered yet: a reply with any other xid is
    # not the switch's table (unsolicited, or late from an earlier read-back) and is dropped.
    dump_xids: set[int] = field(default_factory=set)
    read_backs: int = 0  # read-backs started (`_start_dump`): only the last one's barrier counts

    def remember(self, msg: Any, what: Sent) -> None:
        """Give ``msg`` its xid and note what it asks (called with ``lock`` held)."""
        if msg.xid is None:
            self.dp.set_xid(msg)
        self.sent[msg.xid] = what
        if len(self.sent) > RECENT_MESSAGES:
            self.sent.popitem(last=False)


@dataclass
class Counters:
    """Totals since start, for the status endpoint ("openflow") and the metrics.  Flow-mods,
    group-mods and batches are counted once, by the data plane that asks for them (dataplane
    Stats)."""

    errors: int = 0
    error_types: Counter[str] = field(default_factory=Counter)  # OFPET_... -> error replies
    bundles: int = 0
    barriers: int = 0
    connects: int = 0
    barrier_timeouts: int = 0
    refused: int = 0  # connections closed because they could not prove their host


class TenantnetOfpApp(app_manager.OSKenApp):
    """OSKenApp that AppManager can load beside other os-ken apps."""

    OFP_VERSIONS = [ofp.OFP_VERSION]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.listener: SwitchListener | None = None
        self.counters = Counters()
        self.metrics = Metrics()  # the controller's own, set before switches are attached
        self._switches: dict[int, _Switch] = {}
        self._lock = threading.Lock()
        self.barrier_timeout_s = 5.0
        # (deadline, seq, xid, switch) of every barrier sent; see _expire_barriers
        self._deadlines: list[tuple[float, int, int, _Switch]] = []
        self._deadline_cond = threading.Condition()
        self._seq = itertools.count()
        self._reaper: threading.Thread | None = None
        self._stopped = False  # stop(): no reaper is started again
        self._log_errors = Throttle()
        # Connections that answered FEATURES before the data plane was attached and before
        # `admit_early`: admitted (or refused) by attach(), when the hosts are known.
        self._unadmitted: dict[Any, int] = {}
        self._early_admit: Callable[[int, str | None, str | None], str | None] | None = None
        self._refusals_logged: set[tuple[int, str, str]] = set()
        self.packet_ins: PacketInQueue | None = None
        # (rate pps, burst): the packet-in meter every switch gets when it becomes ready
        self.packet_in_meter: tuple[int, int] | None = None
        # Several controllers (docs/ha.md): dpid -> (master?, generation id) asked of each
        # session of the switch before anything else; none: the switch's default role (equal).
        self._roles: dict[int, tuple[bool, int]] = {}
        self.on_role_refused: Callable[[int, int], None] | None = None  # (dpid, generation)
        # Several controllers: whether this instance acts for a switch's host now (the data
        # plane's ``owns``; any thread, never blocks).  Set: packet-ins are answered only from
        # the switches of owned hosts whose session the switch confirmed MASTER.
        self.owns: Callable[[int], bool] | None = None

    # ----------------------------------------------------------------------------- public API

    def attach(self, listener: SwitchListener) -> None:
        """Set the data plane; switches already synced are reported again, connections that
        came before it are admitted (or refused) now."""
        while True:
            # Every session admitted early is asked again, by the data plane, before it is
            # reported: a host deleted (or re-registered) or whose address changed since the
            # store's hosts were read may no longer prove it.  Until the listener is set,
            # `admit_early` may add more; the listener is set once none is left to ask.
            with self._lock:
                early = [(d, sw) for d, sw in self._switches.items() if sw.early]
                if not early:
                    self.listener = listener
                    ready = [(dpid, sw) for dpid, sw in self._switches.items() if sw.ready]
                    waiting, self._unadmitted = self._unadmitted, {}
                    break
            for dpid, sw in early:
                self._admit_again(listener, dpid, sw)
        for dpid, sw in ready:
            self._install_meter(sw)
            installed = sw.installed
            if installed is None:  # pragma: no cover - ready means read back
                installed = Slice(frozenset(sw.flows), frozenset(sw.groups))
            listener.switch_ready(dpid, installed)
        for dp, dpid in waiting.items():
            admitted = self._admit(dp, dpid)
            if admitted is not None:
                self._read_back(admitted)

    def _admit_again(self, listener: SwitchListener, dpid: int, sw: _Switch) -> None:
        """Ask ``listener`` whether an early session may stay; close and forget it if not."""
        peer_ip = sw.dp.address[0] if sw.dp.address else None
        reason = listener.admit(dpid, peer_ip, tls.peer_common_name(sw.dp.socket))
        with self._lock:
            sw.early = False
            if reason is None or self._switches.get(dpid) is not sw:
                return
            del self._switches[dpid]  # before the close: its end is nobody's news
        self._fail_barriers(sw)
        self._refuse(sw.dp, dpid, peer_ip or "?", reason)

    def admit_early(self, admit: Callable[[int, str | None, str | None], str | None]) -> None:
        """Admit switches with ``admit`` (`SwitchListener.admit`'s question, answered from the
        registered hosts) until the data plane is attached, and read their flows back at once.

        Why: after a restart the switches reconnect while the API is built (the poke, see
        service.py), and their read-back (~500 flows per host at H=3: parsing and decoding
        the replies is most of a restart's CPU after start-up) then overlaps that build
        instead of following the data plane's start.  A switch read back meanwhile is
        reported by `attach` with what was read; nothing is sent to it before (no role: only
        a single instance admits early, no meter: `packet_in_meter` is set before `attach`).
        Connections that came before this call wait for `attach`, as before."""
        with self._lock:
            if self.listener is not None:
                return
            self._early_admit = admit
            waiting, self._unadmitted = self._unadmitted, {}
        for dp, dpid in waiting.items():
            admitted = self._admit(dp, dpid)
            if admitted is not None:
                self._read_back(admitted)

    def connected_dpids(self) -> set[int]:
        with self._lock:
            return {d for d, sw in self._switches.items() if sw.ready}

    def has_session(self, dpid: int) -> bool:
        """Whether a switch with this datapath id is connected (synced or not yet), or a
        connection claiming it waits for `attach` to be admitted: the fast reconnect must not
        make a switch drop the connection it just opened (seen when a switch's own retry came
        just before the data plane started: its read-back failed, one more reconnect)."""
        with self._lock:
            return dpid in self._switches or dpid in self._unadmitted.values()

    def session_of(self, dpid: int) -> int | None:
        """The number of the switch's current OpenFlow session (a new one for every connection,
        however quickly it follows the last), or None if it has none."""
        with self._lock:
            sw = self._switches.get(dpid)
            return None if sw is None else sw.number

    def set_role(self, dpid: int, master: bool, generation: int) -> None:
        """This controller's role on the switch: asked now if it is connected, and first thing
        on every later session.  A switch that refuses it (a newer generation id was seen)
        is reported to ``on_role_refused``."""
        with self._lock:
            before = self._roles.get(dpid)
            self._roles[dpid] = (master, generation)
            sw = self._switches.get(dpid)
        if sw is not None and not master:
            # From now on a reply still on its way must not count: under ``sw.lock``, where
            # `_role_reply` reads the role and sets this, so it cannot set it from the role
            # it read before the one just written.
            with sw.lock:
                sw.master = False
        if sw is None or before == (master, generation):
            return
        self._send_role(sw)
        if master and not (before or (False, 0))[0] and sw.ready:
            self._install_meter(sw)  # not installed while it was a slave

    def forget_role(self, dpid: int) -> None:
        """The switch's host was deleted: its role is forgotten (`set_role` keeps one per
        datapath id, and ids of deleted hosts come back only if the host does).  A session still
        connected answers no packet-in from now on (`_answers_for`)."""
        with self._lock:
            self._roles.pop(dpid, None)
            sw = self._switches.get(dpid)
        if sw is None:
            return
        with sw.lock:  # see `set_role`
            sw.master = False
            # Batches held for a MASTER request are the deleted host's: failed now, as a SLAVE
            # request fails them.  Held on, a MASTER reply after the host was registered again
            # sent them - after the delete's `remove_all`, which is never held (nor sent
            # unless the session is confirmed MASTER).
            dropped = _give_up_held(sw)
        _fail_held(dropped, "not master")

    def _send_role(self, sw: _Switch) -> None:
        """Ask the switch for the role `set_role` last set.  The role is read and its request
        written under ``sw.lock``: the session's first request (`_read_back`, on a switch
        thread) and a change (`set_role`, on the data plane's) may run at once, and the one
        that read first must not write last.  Read outside the lock, an old SLAVE request
        could follow a new MASTER on the wire: the switch refuses it as stale, the session
        stays MASTER on the switch while this app counts it refused (no packet-in answered
        for the host it owns) and nothing asks again, the role being unchanged.  (The dict is
        read without ``self._lock``, as `_answers_for` does: `set_role` writes it before it
        takes ``sw.lock``, and no thread takes ``sw.lock`` while it holds ``self._lock``.)"""
        with sw.lock:
            role = self._roles.get(sw.dp.id)
            if role is None:
                return
            master, generation = role
            name = "master role" if master else "slave role"
            msg = codec.role_request(sw.dp, master, generation)
            sw.remember(msg, Sent(name, generation))
            xid = msg.xid
            # A barrier after it bounds how long batches are held for its answer (`_hold`):
            # a switch that answers neither fails them at the barrier timeout.
            barrier = self._barrier_request(
                sw, lambda ok, why="": self._role_unanswered(sw, xid, why or "no role reply")
            )
            if master:
                sw.role_asked, dropped = xid, []
            else:
                dropped = _give_up_held(sw)
            _send_as_one_write(sw.dp, [msg, barrier])
        _fail_held(dropped, "not master")
        LOG.info("switch %016x: %s asked (generation %d)", sw.dp.id, name, generation)

    def _role_unanswered(self, sw: _Switch, xid: int, why: str) -> None:
        """The barrier after role request ``xid`` came back (or timed out, or the session
        ended) and the switch never answered the request itself: batches held for it fail."""
        with sw.lock:
            dropped = _give_up_held(sw) if sw.role_asked == xid else []
        _fail_held(dropped, why)

    def step_down(self, dpid: int) -> None:
        """Ask EQUAL on the switch's session now (`codec.equal_role_request`), after it refused
        a SLAVE request as stale: the session stops being the switch's master.  Nothing is
        remembered: a later session starts EQUAL anyway, and `set_role` asks again."""
        with self._lock:
            sw = self._switches.get(dpid)
            if sw is None:
                return
            sw.master = False
        self._ask_role(
            sw,
            codec.equal_role_request(sw.dp),
            Sent("equal role request", 0),
            "equal role asked (a slave role was refused as stale)",
        )

    def _ask_role(self, sw: _Switch, msg: Any, label: Sent, asked: str) -> None:
        """Send the role request ``msg`` on the switch's session, remembered as ``label`` (what
        an error reply to it is explained with), and log ``asked``."""
        with sw.lock:
            sw.remember(msg, label)
            _send_as_one_write(sw.dp, [msg])
        LOG.info("switch %016x: %s", sw.dp.id, asked)

    def apply(self, dpid: int, diff: FlowDiff, on_done: DoneCallback) -> bool:
        """Send one diff in dependency order, then a barrier.  False if the switch is gone.

        The order is FlowDiff.messages_in_order's (groups before the flows that point at them,
        group deletions after the flows that pointed at them).  OVS handles the messages of one
        connection in order, so the barrier reply confirms all of them.
        """
        with self._lock:
            sw = self._switches.get(dpid)
            role = self._roles.get(dpid)
        if sw is None or not sw.ready:
            return False
        if role is not None and not sw.master:
            held = self._hold(sw, role[0], diff, on_done)
            if held is not None:
                return held
        batch = self._encode(sw, diff)
        with sw.lock:
            return self._write_diff(sw, diff, batch, on_done)

    def _hold(
        self, sw: _Switch, master: bool, diff: FlowDiff, on_done: DoneCallback
    ) -> bool | None:
        """Several controllers: whether a batch for a session the switch has not confirmed
        MASTER is held (True) or not taken (False); None if it was confirmed meanwhile.

        Why: a session starts EQUAL, and one whose MASTER request the switch refused as stale
        (a newer owner's generation id) stays EQUAL - and an EQUAL session's flow-mods are
        taken like a master's.  Sent right behind the request, as they were, a fenced-off
        instance's flows (it reconnected while a partition hid the new owner from it) were
        installed over the new owner's.  So flows go out only on a session the switch said is
        MASTER.  While the request is unanswered they are held, in order, and sent by
        `_role_reply` the moment it is taken (one round trip later; the session's first request
        is answered before its read-back, so only a role change mid-session waits), or failed
        if it is refused, unanswered by the barrier after it, or the session ends.  Bounded
        (`MAX_HELD`): beyond it, or with no request pending, the batch is not taken, as from
        a switch that is gone."""
        with sw.lock:
            if sw.master:
                return None
            if not master or sw.role_asked is None or len(sw.held) >= MAX_HELD:
                return False
            sw.held.append((diff, on_done))
            return True

    @staticmethod
    def _encode(sw: _Switch, diff: FlowDiff) -> list[tuple[Any, Sent]]:
        return [
            (_ENCODE[kind](sw.dp, item), Sent(_VERB[kind], item))
            for kind, item in diff.messages_in_order()
        ]

    def _write_diff(
        self, sw: _Switch, diff: FlowDiff, batch: list[tuple[Any, Sent]], on_done: DoneCallback
    ) -> bool:
        """Write one encoded diff and its barrier (`apply`); called with ``sw.lock`` held."""
        dp = sw.dp
        if sw.bundles and batch and not diff.additive:
            # One atomic, ordered bundle (ONF EXT-230, OpenFlow 1.3): packets see the old
            # rules or the new ones, never a half-applied diff.  A purely additive diff
            # (see FlowDiff.additive) needs no bundle and saves its wrapping.
            sw.bundle_id = (sw.bundle_id + 1) & 0xFFFFFFFF
            self.counters.bundles += 1
            sw.bundle_in_flight = True
            bid = sw.bundle_id
            batch = [
                (
                    parser.ONFBundleCtrlMsg(dp, bid, ofp.ONF_BCT_OPEN_REQUEST, BUNDLE, []),
                    Sent("open bundle", bid),
                ),
                *(
                    (parser.ONFBundleAddMsg(dp, bid, BUNDLE, m, []), what._replace(bundle=bid))
                    for m, what in batch
                ),
                (
                    parser.ONFBundleCtrlMsg(dp, bid, ofp.ONF_BCT_COMMIT_REQUEST, BUNDLE, []),
                    Sent("commit bundle", bid),
                ),
            ]
        msgs = []
        for msg, what in batch:
            sw.remember(msg, what)  # a bundle-add's inner message gets the same xid
            msgs.append(msg)
        try:
            # Encoded before the barrier is registered: a message that does not encode
            # raises to the caller with nothing registered, so the batch gets exactly one
            # answer (the exception), never a later barrier timeout as well.
            body = _serialise(dp, msgs)
        except BaseException:
            sw.bundle_in_flight = False
            raise
        # sw.errors is not reset here: an earlier batch's barrier reply may still be on its
        # way, and the switch's errors for that batch (which come before it) are its own.
        # Barrier replies come in order, so `_barrier` takes the errors since the last one.
        barrier = self._barrier_request(sw, on_done)
        # Written on this thread when the connection's send thread has nothing queued
        # (`LiveDatapath.write_now`: in order, never blocking, the rest queued): handed
        # to that thread, the batch waited for the interpreter until the data plane let
        # go of it - after it had planned and encoded the step's other hosts, up to a
        # switch interval (5 ms) later - while this host's switch, the one a new port
        # waits for, could have been applying it.
        # A stream lost to a partial write (False): not taken, as from a switch that is
        # gone; the caller answers the batch (`apply`'s False) and its barrier is disarmed.
        return self._send_or_fail(sw, body + _serialise(dp, [barrier]), barrier, direct=True)

    def on_packet_in(
        self,
        handler: PacketInHandler,
        maxsize: int = 256,
        after_replies: Callable[[], None] | None = None,
    ) -> PacketInQueue:
        """Deliver packet-ins of admitted switches from tenantnet's own flows to ``handler`` on
        a bounded queue (see `controller.southbound.packet_in`); its replies go out as
        PACKET_OUTs to the packet's in_port, then ``after_replies`` runs.  Without a handler,
        packet-ins are ignored."""

        def replies_out(dpid: int, frames: Sequence[tuple[int, bytes]], wait: bool) -> bool | None:
            # The worker (wait) waits a little for room: see `packet_in`; nobody else does.
            return self.packet_outs(dpid, frames, wait, REPLY_WAIT_S if wait else 0.0)

        self.packet_ins = PacketInQueue(handler, replies_out, maxsize, after=after_replies)
        return self.packet_ins

    def packet_out(self, dpid: int, port: int, data: bytes) -> bool:
        """Send a frame out of ``port`` of switch ``dpid``; False if it is gone or not reading."""
        return bool(self.packet_outs(dpid, [(port, data)]))

    def packet_outs(
        self,
        dpid: int,
        frames: Sequence[tuple[int, bytes]],
        wait: bool = True,
        wait_s: float = 0.0,
    ) -> bool | None:
        """Send each (port, frame) out of that port of switch ``dpid``, as one write (see
        `controller.southbound.packet_in`); False if it is gone or not reading (its send queue
        full: nobody but the packet-in worker waits for room, the data plane serves every host
        from one thread).  With ``wait`` False (a switch's receive thread) None, nothing sent,
        if another thread holds the switch (the data plane encodes whole bundles under
        `sw.lock`): a receive thread that waited for that would hold back its switch's barrier
        replies and echoes; and the frames are written on it when the connection's send thread
        is idle.  ``wait_s`` (only the packet-in worker's replies, `on_packet_in`): wait up to
        that long for room in a full send queue (`LiveDatapath.take_room`, within the switch's
        wait budget) - before taking `sw.lock`, so that nobody waits behind that wait."""
        with self._lock:
            sw = self._switches.get(dpid)
        if sw is None or not sw.ready:
            return False
        dp = sw.dp
        msgs = [codec.packet_out(dp, port, data) for port, data in frames]
        reserved = wait_s > 0 and hasattr(dp, "take_room")
        if reserved and not dp.take_room(wait_s):
            return False
        try:
            if not sw.lock.acquire(blocking=wait):
                return None
            try:
                for msg, (port, _) in zip(msgs, frames, strict=True):
                    sw.remember(msg, Sent("packet out", port))
                if not reserved:
                    return _send_as_one_write(dp, msgs, direct=not wait)
                buf = _serialise(dp, msgs)
                reserved = False  # the place is the buffer's now, whatever happens to it
                return bool(dp.put_taken(buf))
            finally:
                sw.lock.release()
        finally:
            if reserved:
                dp.give_back_room()

    def add_transient_flow(self, dpid: int, rule: Rule, hard_timeout: int) -> bool:
        """Add ``rule`` with a hard timeout, outside any batch (a flooding port's DHCP drop,
        `controller.dataplane.dhcp`): the switch expires it and the data plane never diffs it
        (`flows.tables.TRANSIENT_KINDS`).  False if the switch is gone or not reading, or if
        its lock stays held for `TRANSIENT_LOCK_WAIT_S`: the callers are packet-in handlers,
        on the switch's receive thread or the shared worker, which must not wait behind the
        data plane encoding a large batch under that lock (its barrier replies would wait
        too); the lock's ordinary holds (a reply's bookkeeping) last microseconds.  A ban not
        sent drops the flood in the controller instead, for that ban."""
        with self._lock:
            sw = self._switches.get(dpid)
        if sw is None or not sw.ready:
            return False
        msg = codec.flow_add(sw.dp, rule, hard_timeout=hard_timeout)
        if not sw.lock.acquire(timeout=TRANSIENT_LOCK_WAIT_S):
            return False
        try:
            sw.remember(msg, Sent(f"add flow for {hard_timeout} s", rule))
            return _send_as_one_write(sw.dp, [msg])
        finally:
            sw.lock.release()

    def flush_ct_zones(self, dpid: int, zones: list[int]) -> bool:
        """Clear these conntrack zones (`ofp_codec.ct_flush_zone`).  Sent before or after a
        step's diff on the same connection, which OVS handles in order (the data plane says
        which: a zone a port's flows are about to filter in, a zone whose port's flows are
        gone).  True: written to the connection (no barrier).  False if the switch is gone (a
        vswitchd that restarted has lost its conntrack table anyway) or not reading."""
        with self._lock:
            sw = self._switches.get(dpid)
        if sw is None or not sw.ready:
            return False
        with sw.lock:
            msgs = [codec.ct_flush_zone(sw.dp, zone) for zone in zones]
            for msg, zone in zip(msgs, zones, strict=True):
                sw.remember(msg, Sent("flush conntrack zone", zone))
            # Written now, like the diff after it (`apply`): queued, it would hold that diff
            # back for the send thread (a new port's first flows come right after a flush).
            return bool(_write_now(sw.dp, _serialise(sw.dp, msgs)))

    def set_packet_in_meter(
        self, dpid: int, rate_pps: int, burst: int, on_done: DoneCallback
    ) -> bool:
        """Install the host's packet-in meter (`ofp_codec.controller_meter`), then a barrier.
        The data plane sends it on every switch_ready (idempotent)."""
        with self._lock:
            sw = self._switches.get(dpid)
        if sw is None or not sw.ready:
            return False
        with sw.lock:
            msgs = codec.controller_meter(sw.dp, rate_pps, burst)
            sw.remember(msgs[0], Sent("delete controller meter"))
            sw.remember(msgs[1], Sent(f"add controller meter {rate_pps} pps burst {burst}"))
            barrier = self._barrier_request(sw, on_done)
            self._send_or_fail(sw, [*msgs, barrier], barrier)
        return True

    def resync(self, dpid: int) -> None:
        """Read a switch's flows and groups again (after it rejected something we sent)."""
        with self._lock:
            sw = self._switches.get(dpid)
        if sw is not None:
            self._start_dump(sw)

    def read_all(self, dpid: int, on_done: Callable[..., None]) -> bool:
        """Dump every flow (any cookie: foreign ones too) and every group of a synced switch,
        then ``on_done(Slice, "")``, or ``on_done(None, why)`` if it did not answer both within
        ``barrier_timeout_s`` (``"timeout"``, ``"disconnected"``, ``"too many flows"``).  Unlike
        the read on (re)connect, the switch stays ready meanwhile: batches keep going, and the
        caller decides whether the answer is still current (the drift audit).  False if the
        switch is not synced."""
        with self._lock:
            sw = self._switches.get(dpid)
        if sw is None or not sw.ready:
            return False
        read = _Read(on_done)
        with sw.lock:
            requests = [codec.flow_dump_request(sw.dp, 0, 0), codec.group_dump_request(sw.dp)]
            sw.remember(requests[0], Sent("read back all flows"))
            sw.remember(requests[1], Sent("read back groups"))
            for req in requests:
                sw.reads[req.xid] = read
            barrier = self._barrier_request(
                sw, lambda ok, why="": self._read_answered(sw, read, why)
            )
            requests.append(barrier)
            self._send_or_fail(sw, requests, barrier)
        return True

    @staticmethod
    def _read_answered(sw: _Switch, read: _Read, why: str) -> None:
        """The barrier after a read_all (or its timeout): both dumps were answered before it,
        or the read is given up.  A given-up read keeps its xids until its late replies come
        (they must not be taken for a reconnect's read-back); at most MAX_GIVEN_UP of them."""
        with sw.lock:
            # A dump answered in full has left sw.reads already (_read_part).
            read.given_up = bool(read.parts_pending)
            if len(sw.reads) > 2 * MAX_GIVEN_UP:
                for xid in list(sw.reads)[: len(sw.reads) - 2 * MAX_GIVEN_UP]:
                    del sw.reads[xid]
        if read.too_big:
            read.on_done(None, "too many flows")
        elif read.parts_pending:
            read.on_done(None, why or "incomplete answer")
        else:
            read.on_done(Slice(frozenset(read.flows), frozenset(read.groups)), "")

    def remove_all(self, dpid: int, group_ids: list[int], on_done: DoneCallback) -> bool:
        """Delete every flow with our cookie and the given groups (host removal).  False if
        the switch is gone, or (several controllers) if its session is not one the switch
        confirmed MASTER: fenced like `apply`'s batches, since an EQUAL session's deletes are
        taken like a master's and a stale instance's late delete would empty the flows of the
        host registered again under a new owner.  Not held either: `forget_role` follows."""
        with self._lock:
            sw = self._switches.get(dpid)
            fenced = dpid in self._roles
        if sw is None:
            return False
        dp = sw.dp
        with sw.lock:
            if fenced and not sw.master:
                return False
            msgs = [codec.delete_all_ours(dp, COOKIE_BASE, COOKIE_MASK_OURS)]
            sw.remember(msgs[0], Sent("delete all tenantnet flows"))
            for gid in group_ids:
                msgs.append(codec.group_delete(dp, gid))
                sw.remember(msgs[-1], Sent("delete group", gid))
            barrier = self._barrier_request(sw, on_done)
            msgs.append(barrier)
            self._send_or_fail(sw, msgs, barrier)
        return True

    # ----------------------------------------------------------------------------- os-ken events

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def _features(self, ev: Any) -> None:
        # The id the switch claims, from the message: os-ken's own handler sets ``dp.id`` on its
        # thread, which may not have run yet (seen under load when a switch reconnects twice in
        # a row).  Nothing is sent to the connection before it is admitted.
        dp, dpid = ev.msg.datapath, ev.msg.datapath_id
        with self._lock:
            if self.listener is None and self._early_admit is None:
                self._unadmitted[dp] = dpid
                return
        sw = self._admit(dp, dpid)
        if sw is not None:
            self._read_back(sw)

    def _admit(self, dp: Any, dpid: int, wait: bool = True) -> _Switch | None:
        """Accept ``dp`` as the session of ``dpid``, or close it (or, ``wait``, decide again
        after SECOND_SESSION_WAIT_S if only the live session is in the way).

        The data plane says whether the connection proves to be that host's switch (certificate
        or address, see dataplane/admission.py).  A session that is alive is never displaced:
        whoever connects second, impostor or not, cannot take the host's flows, session or port
        status.  A real switch whose old session died gets in on its next attempt: a closed
        socket ends the session at once, and one that fell silent (a host that rebooted without
        closing it) is closed by the liveness watchdog (ofp_server.py, ``ofp_dead_after_s``).
        """
        listener = self.listener
        admit = listener.admit if listener is not None else self._early_admit
        assert admit is not None
        peer_ip = dp.address[0] if dp.address else None
        peer_cn = tls.peer_common_name(dp.socket)
        reason = admit(dpid, peer_ip, peer_cn)
        busy = again = False
        with self._lock:
            old = self._switches.get(dpid)
            if old is not None and old.dp is dp:
                return old  # already its session
            if listener is None and self.listener is not None:
                # `attach` came meanwhile and asks only the sessions it sees: ask its listener
                again = True
            elif reason is None and old is not None and old.dp is not dp and _alive(old.dp):
                busy = wait
                reason = "the host's switch already has a live session"
            elif reason is None:
                sw = self._switches[dpid] = _Switch(dp=dp, early=listener is None)
                # its packet-ins come straight from the parser (`osken_packetin`), no event
                dp.packet_in_sink = self._packet_in_now
                if old is not None and listener is not None:
                    # A session that ended but whose end is still queued (its DEAD state
                    # change, which will find this one in its place and say nothing): the data
                    # plane hears it is gone now, before its batches fail below and before this
                    # one is ready.  Unheard, it took those failures ("disconnected") for the
                    # session it still had recorded and re-read the switch - this new session,
                    # mid read-back, whose first dump's barrier then closed it.
                    listener.switch_gone(dpid)
        if again:
            return self._admit(dp, dpid, wait)
        if busy:  # nothing is sent to it meanwhile
            timer = threading.Timer(SECOND_SESSION_WAIT_S, self._admit_later, (dp, dpid))
            timer.daemon = True
            timer.start()
            return None
        if reason is not None:
            self._refuse(dp, dpid, peer_ip or "?", reason)
            return None
        if old is not None:
            self._fail_barriers(old)
        self.counters.connects += 1
        LOG.info(
            "switch %016x connected from %s%s",
            dpid,
            peer_ip or "?",
            f" (certificate {peer_cn!r})" if peer_cn else "",
        )
        return sw

    def _admit_later(self, dp: Any, dpid: int) -> None:
        """The second look at a connection that found its host's session alive."""
        if not _alive(dp):
            return
        sw = self._admit(dp, dpid, wait=False)
        if sw is not None:
            self._read_back(sw)

    def _refuse(self, dp: Any, dpid: int, peer: str, reason: str) -> None:
        """Close a connection that may not speak for ``dpid``; log each kind of refusal once."""
        self.counters.refused += 1
        key = (dpid, peer, reason)
        with self._lock:
            first = key not in self._refusals_logged
            if first:
                if len(self._refusals_logged) >= MAX_REFUSALS_REMEMBERED:
                    self._refusals_logged.clear()
                self._refusals_logged.add(key)
        if first:
            LOG.warning(
                "refused OpenFlow connection from %s claiming datapath %016x: %s",
                peer,
                dpid,
                reason,
            )
        _close(dp, f"refused: {reason}")

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state_change(self, ev: Any) -> None:
        dp = ev.datapath
        if ev.state == DEAD_DISPATCHER:
            with self._lock:
                self._unadmitted.pop(dp, None)
        if dp.id is None:
            return
        if ev.state == MAIN_DISPATCHER:
            with self._lock:
                sw = self._switches.get(dp.id)
            if sw is None or sw.dp is not dp:
                return
            self._read_back(sw)  # started at FEATURES already, unless it came before that
        elif ev.state == DEAD_DISPATCHER:
            with self._lock:
                sw = self._switches.get(dp.id)
                if sw is None or sw.dp is not dp:
                    return
                del self._switches[dp.id]
                # Told under the lock that let the session go (`switch_gone` only queues): a
                # next session of the switch is admitted only after this (`_admit`, on a
                # timer thread when it came while this one was alive), so its switch_ready
                # is queued after this switch_gone.  Told after the lock, the next session
                # could be read back and reported ready first: the data plane then took the
                # late gone for the new session, and held the host down for good.
                if self.listener is not None:
                    self.listener.switch_gone(dp.id)
            self._fail_barriers(sw)
            LOG.warning("switch %016x disconnected", dp.id)

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _flow_stats(self, ev: Any) -> None:
        sw = self._switch_of(ev.msg.datapath)
        if sw is None:
            return
        if self._read_part(sw, ev.msg, codec.decode_flow_stats, "flows"):
            return
        self._read_back_part(sw, ev.msg, codec.decode_flow_stats, "flows")

    @set_ev_cls(ofp_event.EventOFPGroupDescStatsReply, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _group_desc(self, ev: Any) -> None:
        sw = self._switch_of(ev.msg.datapath)
        if sw is None:
            return
        if self._read_part(sw, ev.msg, codec.decode_group_desc, "groups"):
            return
        self._read_back_part(sw, ev.msg, codec.decode_group_desc, "groups")

    @set_ev_cls(ofp_event.EventOFPBarrierReply, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _barrier(self, ev: Any) -> None:
        sw = self._switch_of(ev.msg.datapath)
        if sw is None:
            return
        with sw.lock:
            cb = sw.barriers.pop(ev.msg.xid, None)
            sent = sw.sent.get(ev.msg.xid)
            ok = sw.errors == 0
            sw.errors = 0
            sw.bundle_in_flight = False
        if cb is not None and sent is not None:
            self.metrics.barrier_rtt.observe(time.monotonic() - sent.at)
        if cb is not None:
            cb(ok, "" if ok else "rejected")

    def _send_event(self, ev: Any, state: Any) -> None:
        """os-ken's delivery of an event to this app, called on the thread that decoded it:
        packet-ins are handed to `_deliver` right here, on their switch's receive thread;
        everything else goes to os-ken's app event queue as before.  (An admitted switch's
        packet-ins in its main state come from the parser without an event: `_packet_in_now`.)

        Why: that queue is one thread for every switch, 128 entries, and a full queue blocks
        the receive thread of whichever switch delivers next.  Through it, each packet-in cost
        one more thread hand-off (~0.3 ms of a DHCP answer's ~2 ms on a loaded machine), and a
        burst of packet-ins from one host sat in front of other switches' barrier replies and
        flow dumps.  `_deliver` never blocks (it classifies and offers to the bounded
        packet-in queue), so a host's packet-ins now cost only its own receive thread, and
        the event queue carries control messages alone.  (The ``set_ev_cls`` registration
        below stays: it is what makes os-ken's OpenFlow brick send packet-ins to this app.)

        The replies to what this app asks a switch (`_REPLIES`: barrier, error, flow and
        group dumps, role) are handled here too, by the same handlers: in the order the
        switch sent them, which is all their handlers rely on (an error before the barrier
        that closes its batch, a dump's parts before the barrier after the dump), and never
        behind another switch's.  Through the shared queue, a barrier reply - the end of
        every batch, what a new port waits for to be ACTIVE - took one more thread hand-off
        on its path, and waited behind whatever other switches had queued: a drift audit's
        dump of thousands of flows decoded there held every host's barriers meanwhile.  The
        session's state changes stay on the queue; a reply is matched to its session
        (`_switch_of`) and a barrier is answered once (popped under the switch's lock), so a
        reply that overtakes the queued disconnect of its own session is simply taken.
        """
        if isinstance(ev, ofp_event.EventOFPPacketIn):
            self._deliver_safely(ev.msg)
            return
        handler = _REPLIES.get(type(ev))
        if handler is not None and state in (CONFIG_DISPATCHER, MAIN_DISPATCHER):
            try:
                getattr(self, handler)(ev)
            except Exception:  # as os-ken's event loop: logged, the receive loop goes on
                LOG.exception("switch reply %s could not be handled", type(ev).__name__)
            return
        super()._send_event(ev, state)

    def _packet_in_now(self, msg: Any) -> bool:
        """An admitted switch's packet-in, handed over by the parser on its receive thread
        (`controller.southbound.osken_packetin`: its `Fields`, no message nor event is made
        of it): delivered as `_packet_in` would (True), or left to os-ken's event path
        (False) while the session is not in its main state, where `_packet_in`'s
        registration does not take it."""
        if msg.datapath.state != MAIN_DISPATCHER:
            return False
        self._deliver_safely(msg)
        return True

    def _deliver_safely(self, msg: Any) -> None:
        """`_deliver` on a switch's receive thread: one bad message must never end its loop."""
        try:
            self._deliver(msg)
        except Exception:
            if self.packet_ins is not None:
                self.packet_ins.refuse()
            if self._log_errors("packet-in delivery") is not None:
                LOG.exception("packet-in from a switch could not be handled")

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _packet_in(self, ev: Any) -> None:
        """A packet-in that came as an event (see `_send_event`)."""
        self._deliver(ev.msg)

    def _deliver(self, msg: Any) -> None:
        """Hand a packet-in (os-ken's ``OFPPacketIn`` or `osken_packetin.Fields`) to the
        queue (never blocks this switch's receive thread).  Only from a switch that is a
        host's session and a flow with tenantnet's cookie: a packet-in is input from a
        hypervisor, and anything else is no question tenantnet asked."""
        queue = self.packet_ins
        if queue is None:
            return
        sw = self._switch_of(msg.datapath)
        data = msg.data if isinstance(msg.data, (bytes, bytearray)) else b""
        in_port = msg.match.get("in_port") if msg.match is not None else None
        if (
            sw is None
            or not sw.ready
            or not is_ours(msg.cookie)
            or in_port is None
            or not 0 < len(data) <= MAX_FRAME
        ):
            queue.refuse()
            return
        if not self._answers_for(sw):
            queue.refuse(not_owner=True)
            return
        metadata = msg.match.get("metadata")
        queue.offer(
            PacketIn(
                dpid=sw.dp.id,
                table_id=msg.table_id,
                cookie=msg.cookie,
                reason=msg.reason,
                in_port=in_port,
                metadata=metadata if isinstance(metadata, int) else None,
                data=bytes(data),
            )
        )

    def _answers_for(self, sw: _Switch) -> bool:
        """Whether packet-ins of this session are this instance's to answer.  One controller:
        always.  Several: only while it owns the switch's host and the switch confirmed the
        session MASTER; a former owner (its SLAVE request not taken yet, or refused: the
        session stays EQUAL and keeps getting packet-ins) must not answer DHCP or ARP for a
        host another instance now serves.  No lock: this runs on the receive thread."""
        owns = self.owns
        if owns is None:
            return True
        role = self._roles.get(sw.dp.id)
        return role is not None and role[0] and sw.master and owns(sw.dp.id)

    @set_ev_cls(ofp_event.EventOFPRoleReply, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _role_reply(self, ev: Any) -> None:
        """The switch took a role request: the session is MASTER if that is what it says and
        still what this instance asks (a SLAVE request sent since makes a late reply void)."""
        sw = self._switch_of(ev.msg.datapath)
        if sw is None:
            return
        dropped: list[DoneCallback] = []
        with sw.lock:
            # The role read under ``sw.lock`` (as `_send_role` reads it), where `set_role`
            # demotes the session: read before it, a reply to the MASTER request crossing a
            # change to SLAVE made the session master again after `set_role` had said no
            # reply on its way counts - and `apply` then wrote batches straight to it.
            role = self._roles.get(sw.dp.id)
            master = ev.msg.role == ofp.OFPCR_ROLE_MASTER and role is not None and role[0]
            if sw.role_asked is not None and ev.msg.xid != sw.role_asked:
                # A reply to an earlier request while a later MASTER request is unanswered:
                # it may demote the session, never confirm it.  Confirmed here, `apply` sent
                # the next batches straight away, ahead of those held for the later request
                # (sent when its reply comes), and behind their barriers.
                master = master and sw.master
            sw.master = master
            if sw.role_asked is not None and ev.msg.xid == sw.role_asked:
                for diff, on_done in _take_held(sw):  # in the order `apply` was asked
                    if not sw.master:
                        dropped.append(on_done)
                        continue
                    try:
                        if not self._write_diff(sw, diff, self._encode(sw, diff), on_done):
                            dropped.append(on_done)
                    except Exception:  # pragma: no cover - the compilers' rules all encode
                        LOG.exception("switch %016x: a held batch did not encode", sw.dp.id)
                        dropped.append(on_done)
        _fail_held(dropped, "not master")

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _error(self, ev: Any) -> None:
        """Count the error against the batch in flight (its barrier then says "rejected") and
        log what the switch refused, by the xid of the message that caused it."""
        msg = ev.msg
        dpid = msg.datapath.id or 0
        self.counters.errors += 1
        self.counters.error_types[_error_type(msg)] += 1
        sw = self._switch_of(msg.datapath)
        cause: Sent | None = None
        if sw is not None:
            with sw.lock:
                sw.errors += 1
                cause = sw.sent.get(msg.xid)
                no_bundles = (
                    cause is not None
                    and cause.verb in ("open bundle", "commit bundle")
                    and not _is_bundle_msg_failed(msg)
                    and sw.bundles
                )
                if no_bundles:
                    sw.bundles = False
            if no_bundles:
                LOG.warning(
                    "switch %016x refused a bundle (%s): using ordered messages from now on",
                    dpid,
                    _error_name(msg),
                )
        if cause is not None and cause.verb.endswith(" role"):
            assert sw is not None and isinstance(cause.subject, int)
            sw.master = False  # the session kept its role (EQUAL): answers no packet-in
            if self.on_role_refused is not None:
                self.on_role_refused(dpid, cause.subject)
            # After the refusal is posted: the data plane hears it before these batches fail.
            self._role_unanswered(sw, msg.xid, "role refused")
        if cause is not None and cause.verb == "commit bundle" and _is_bundle_msg_failed(msg):
            # The refused message inside it had its own error reply, logged below.
            LOG.debug("switch %016x did not commit bundle %s", dpid, cause.subject)
            return
        # Throttled per switch, error type (one of the protocol's few, not the code a switch
        # may vary at will: each new code was a new key, so a line per error) and cause (one
        # of the messages sent to it); every connection not admitted as a switch shares one
        # key (any peer may send errors during its handshake, under whatever id it claims).
        if sw is None:
            skipped = self._log_errors("not admitted")
            if skipped is not None:
                LOG.warning(
                    "a connection not admitted as a switch (claiming %016x) sent an OpenFlow "
                    "error: %s%s",
                    dpid,
                    _error_name(msg),
                    f" ({skipped} more from such connections since last logged)" if skipped else "",
                )
            return
        if cause is None:
            what = f"a message not among the last {RECENT_MESSAGES} sent ({_msg_type(msg)})"
            key = f"{dpid} {_error_type(msg)} unknown"
        else:
            what = cause.text()
            key = f"{dpid} {_error_type(msg)} {cause._replace(bundle=None).text()}"
        skipped = self._log_errors(key)
        if skipped is not None:
            LOG.error(
                "switch %016x refused %s: %s%s",
                dpid,
                what,
                _error_name(msg),
                f" ({skipped} more times since last logged)" if skipped else "",
            )

    # ----------------------------------------------------------------------------- helpers

    @staticmethod
    def _read_part(sw: _Switch, msg: Any, decode: Callable[[Any], Any], what: str) -> bool:
        """A reply to a read_all's dump (by xid): collected there.  False: not one of them."""
        last = not msg.flags & ofp.OFPMPF_REPLY_MORE
        with sw.lock:
            read = sw.reads.get(msg.xid)
            if read is not None and last:
                del sw.reads[msg.xid]
        if read is None:
            return False
        if read.given_up:
            return True  # a late reply to a read already answered without it
        items: list[Any] = getattr(read, what)
        if len(read.flows) + len(read.groups) + len(msg.body) > MAX_READ_FLOWS:
            read.too_big = True
        if not read.too_big:
            items.extend(decode(s) for s in msg.body)
        if last:
            read.parts_pending -= 1
        return True

    def _read_back_part(
        self, sw: _Switch, msg: Any, decode: Callable[[Any], Any], what: str
    ) -> None:
        """Add ``msg`` to the read-back under way if it is one of its replies (by xid: any other
        is unsolicited, or late from an earlier read-back, and dropped); its last dump's last
        part makes the switch ready.  A switch that answers with more than MAX_READ_FLOWS flows
        and groups is closed (its replies would be held until it is ready), as one that does
        not answer.  The xid is checked again, the part added and the dump counted in one hold
        of ``sw.lock``, under which `_start_dump` replaces the read-back: a resync meanwhile
        (decoding, outside it, may take a while) makes this reply a stale one."""
        with sw.lock:
            if msg.xid not in sw.dump_xids:
                return
        items = [decode(m) for m in msg.body]
        with sw.lock:
            if msg.xid not in sw.dump_xids:
                return  # a resync started another read-back while it was decoded
            fits = len(sw.flows) + len(sw.groups) + len(items) <= MAX_READ_FLOWS
            if not fits:
                sw.dump_xids.clear()
            else:
                getattr(sw, what).extend(items)
            done = fits and not msg.flags & ofp.OFPMPF_REPLY_MORE
            ready = self._dump_part_done(sw, msg.xid) if done else None
        if not fits:
            _end(sw.dp, f"more than {MAX_READ_FLOWS} flows and groups in its read-back")
        elif ready is not None:
            self._read_back_done(sw, *ready)

    def _switch_of(self, dp: Any) -> _Switch | None:
        with self._lock:
            sw = self._switches.get(dp.id)
        return sw if sw is not None and sw.dp is dp else None

    def _barrier_request(self, sw: _Switch, on_done: DoneCallback) -> Any:
        """The barrier that closes a batch: `on_done` runs when the switch has processed
        everything before it, or after ``barrier_timeout_s``.  Called with `sw.lock` held and
        before anything is sent, so the callback is registered before the reply can come."""
        barrier = parser.OFPBarrierRequest(sw.dp)
        sw.remember(barrier, Sent("barrier", at=time.monotonic()))
        self.counters.barriers += 1
        sw.barriers[barrier.xid] = on_done
        deadline = time.monotonic() + self.barrier_timeout_s
        with self._deadline_cond:
            stopped = self._stopped
            if not stopped:
                heapq.heappush(self._deadlines, (deadline, next(self._seq), barrier.xid, sw))
                if self._reaper is None:
                    self._reaper = threading.Thread(
                        target=self._expire_barriers, name=BARRIER_THREAD, daemon=True
                    )
                    self._reaper.start()
                self._deadline_cond.notify()
        if stopped:  # no reaper any more: failed at once, off the caller's `sw.lock`
            threading.Thread(
                target=self._fail_barrier, args=(sw, barrier.xid, "stopped"), daemon=True
            ).start()
        return barrier

    def stop(self) -> None:
        """Stop the app's own threads (the barrier reaper, the packet-in worker), then os-ken's
        part (`AppManager.close` calls this).  Batches still waiting for their barrier are
        answered as failed, as a lost connection answers them, and so is every batch sent
        after: every batch gets its answer, and no thread is left to report one long after
        its app is gone."""
        with self._deadline_cond:
            self._stopped = True
            reaper, self._reaper = self._reaper, None
            self._deadlines.clear()
            self._deadline_cond.notify_all()
        if reaper is not None:
            reaper.join()
        with self._lock:
            switches = list(self._switches.values())
        for sw in switches:
            self._fail_barriers(sw, "stopped")
        if self.packet_ins is not None:
            self.packet_ins.close()
        super().stop()

    def _expire_barriers(self) -> None:
        """Fail every barrier its switch has not answered in time (one thread for all), until
        `stop`."""
        while True:
            with self._deadline_cond:
                while not self._deadlines and not self._stopped:
                    self._deadline_cond.wait()
                if self._stopped:
                    return
                deadline, _, xid, sw = self._deadlines[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._deadline_cond.wait(wait)
                    continue
                heapq.heappop(self._deadlines)
            with sw.lock:
                cb = sw.barriers.pop(xid, None)
                if cb is not None:
                    sw.bundle_in_flight = False
            if cb is None:
                continue  # answered (or failed) already
            self.counters.barrier_timeouts += 1
            LOG.warning(
                "switch %016x did not confirm a batch within %g s",
                sw.dp.id or 0,
                self.barrier_timeout_s,
            )
            cb(False, "timeout")

    def _read_back(self, sw: _Switch) -> None:
        """The read-back of a new session's flows and groups, once per session: as soon as it is
        admitted (at FEATURES), not after os-ken's port description round trip (which only
        moves the connection to MAIN_DISPATCHER; tenantnet never reads those ports).  The
        replies may therefore come while os-ken still says CONFIG_DISPATCHER: the handlers
        of the dump's replies and barrier listen in both states."""
        with sw.lock:
            if sw.read_back_started:
                return
            sw.read_back_started = True
        self._send_role(sw)  # before anything else of the session: a slave sends no flow-mod
        self._start_dump(sw)

    def _start_dump(self, sw: _Switch) -> None:
        """Read the switch's flows and groups (back): a new session's (`_read_back`, on its
        connection thread) or again (`resync`, on the data plane's).  The two can overlap: a
        resync while a read-back's replies or its barrier are still being handled.  So the
        read-back is replaced whole under ``sw.lock``, under which the reply handlers check a
        reply's xid and count it (`_read_back_part`) and the barrier's callback reads the
        count (`_dump_answered`): the previous read-back's late replies are dropped by xid,
        its barrier by number.  (Reset outside the lock, a reply of the previous one was
        counted as the new one's, which was then ready without one of its dumps, and the
        previous one's barrier found the new one's dumps unanswered and closed the switch.)
        ``ready`` is also written under ``self._lock``, where `attach` reads it with the
        listener; lock order ``sw.lock`` then ``self._lock``, as no thread takes ``sw.lock``
        while it holds ``self._lock``."""
        with sw.lock:
            with self._lock:
                sw.ready = False
                sw.installed = None
            sw.flows, sw.groups = [], []
            sw.pending_dumps = 2
            sw.read_backs += 1
            number = sw.read_backs
            # The barrier after the dumps answers once both replies came (one connection is
            # handled in order); if it times out, the switch answers echoes but not requests.
            barrier = self._barrier_request(
                sw, lambda ok, why="": self._dump_answered(sw, number, why)
            )
            requests = [
                codec.flow_dump_request(sw.dp, COOKIE_BASE, COOKIE_MASK_OURS),
                codec.group_dump_request(sw.dp),
            ]
            sw.remember(requests[0], Sent("read back tenantnet flows"))
            sw.remember(requests[1], Sent("read back groups"))
            sw.dump_xids = {requests[0].xid, requests[1].xid}
            requests.append(barrier)
            self._send_or_fail(sw, requests, barrier)

    def _dump_answered(self, sw: _Switch, number: int, why: str) -> None:
        """A switch that does not answer its dump in time is never synced, and would hold its
        datapath id: close the connection so that it starts afresh.  So is one that answers
        the barrier after the dumps without having answered them (a switch answers in order:
        it lies, or a reply was lost), and one that answered a dump with an error (its
        barrier says "rejected"; the error itself is logged by `_error`): either would
        otherwise stay unsynced for good, connected and never programmed, with nothing said.
        Only for read-back ``number`` while it is the last one: one replaced by a resync has
        no say (the new one's dumps come after this barrier; its own barrier judges it).  A
        switch that keeps doing it reconnects every second or so: the line is throttled."""
        with sw.lock:
            unanswered = sw.pending_dumps if number == sw.read_backs else 0
        if not unanswered or why not in _DUMP_FAILURES:
            return
        reason = _DUMP_FAILURES[why]
        dpid = sw.dp.id or 0
        skipped = self._log_errors(f"read-back {dpid:016x} {why}")
        if skipped is not None:
            LOG.warning(
                "switch %016x: %s the read-back of its flows; closing%s",
                dpid,
                reason,
                f" ({skipped} more times since the last line)" if skipped else "",
            )
        _end(sw.dp, f"{reason} the flow/group dump")

    def _dump_part_done(self, sw: _Switch, xid: int) -> tuple[Slice, SwitchListener | None] | None:
        """Dump ``xid`` of the read-back under way is answered in full; with ``sw.lock`` held.
        The last one makes the switch ready: what was read and the listener to tell."""
        sw.dump_xids.discard(xid)
        sw.pending_dumps -= 1
        if sw.pending_dumps:
            return None
        # Our groups are the ones our flows can point at: the data plane owns ids by network key.
        installed = Slice(frozenset(sw.flows), frozenset(sw.groups))
        # Ready and the listener read together, as `attach` reads them: the switch is reported
        # once, here or by `attach` (twice, the data plane would diff and send it twice).
        with self._lock:
            sw.installed = installed
            sw.ready = True
            return installed, self.listener

    def _read_back_done(
        self, sw: _Switch, installed: Slice, listener: SwitchListener | None
    ) -> None:
        """Report a read-back finished (`_dump_part_done`); off ``sw.lock``."""
        LOG.info(
            "switch %016x: read %d flows and %d groups back",
            sw.dp.id,
            len(installed.rules),
            len(installed.groups),
        )
        if listener is not None:  # else `attach` reports it (and installs the meter)
            self._install_meter(sw)
            listener.switch_ready(sw.dp.id, installed)

    def _install_meter(self, sw: _Switch) -> None:
        """The host's packet-in budget (`packet_in_meter`), sent on every switch_ready: before
        any punt flow of the data plane, and again after a reconnect (a restarted vswitchd has
        none).  A switch that refuses it still works; its packet-ins are then unmetered."""
        with self._lock:
            slave = not self._roles.get(sw.dp.id, (True, 0))[0]
        if self.packet_in_meter is None or slave:  # a slave may not (set_role installs it)
            return
        rate, burst = self.packet_in_meter
        dpid = sw.dp.id

        def done(ok: bool, why: str = "") -> None:
            if not ok:
                LOG.warning("switch %016x: packet-in meter not installed (%s)", dpid, why)

        self.set_packet_in_meter(dpid, rate, burst, done)

    def _send_or_fail(
        self, sw: _Switch, msgs: list[Any] | bytes, barrier: Any, direct: bool = False
    ) -> bool:
        """Queue the batch (``direct``: write it now if nothing is queued, see `_write_now`);
        if the switch's send queue is full (it stopped reading what it is sent), fail the
        batch at once rather than block the data plane, which serves every host from one
        thread.  False, with the batch disarmed and not answered, if a direct write lost the
        stream (`Write.LOST`): the caller reports the batch not taken.  Called with `sw.lock`
        held; the callback runs on a fresh thread so that it never runs under it."""
        try:
            buf = msgs if isinstance(msgs, bytes) else _serialise(sw.dp, msgs)
        except BaseException:  # the exception is the batch's one answer: disarm its barrier
            sw.barriers.pop(barrier.xid, None)
            sw.bundle_in_flight = False
            raise
        if direct:
            written = _write_now(sw.dp, buf)
        else:
            written = Write.TAKEN if _send_buf(sw.dp, buf) else Write.REFUSED
        if written:
            return True
        cb = sw.barriers.pop(barrier.xid, None)
        sw.bundle_in_flight = False
        if written is Write.LOST:
            return False
        skipped = self._log_errors(f"stalled {sw.dp.id}")
        if skipped is not None:
            LOG.warning("switch %016x is not reading what it is sent: batch dropped", sw.dp.id or 0)
        if cb is not None:
            threading.Thread(target=cb, args=(False, "timeout"), daemon=True).start()
        return True

    @staticmethod
    def _fail_barrier(sw: _Switch, xid: int, why: str) -> None:
        """Answer one batch as failed, unless its barrier was answered already."""
        with sw.lock:
            cb = sw.barriers.pop(xid, None)
            if cb is not None:
                sw.bundle_in_flight = False
        if cb is not None:
            cb(False, why)

    @staticmethod
    def _fail_barriers(sw: _Switch, why: str = "disconnected") -> None:
        """Answer every batch of a session that ended, sent or held, as failed."""
        with sw.lock:
            pending = list(sw.barriers.values())
            sw.barriers.clear()
            held = _give_up_held(sw)
        _fail_held(held, why)
        for cb in pending:
            cb(False, why)


def _take_held(sw: _Switch) -> list[tuple[FlowDiff, DoneCallback]]:
    """The batches held for a role reply (`TenantnetOfpApp._hold`), now none, and the request
    they waited for no longer awaited (batches are held only while one is); ``sw.lock`` held."""
    sw.role_asked = None
    held, sw.held = sw.held, []
    return held


def _give_up_held(sw: _Switch) -> list[DoneCallback]:
    """`_take_held` for batches that will not be sent: their callbacks, to fail."""
    return [on_done for _, on_done in _take_held(sw)]


def _fail_held(callbacks: Sequence[DoneCallback], why: str) -> None:
    """Answer held batches as failed, in order; never called under ``sw.lock``."""
    for on_done in callbacks:
        on_done(False, why)


def _error_name(msg: Any) -> str:
    """``OFPET_FLOW_MOD_FAILED(5) OFPFMFC_TABLE_FULL(1)``, or the ONF experimenter error."""
    if msg.type == ofp.OFPET_EXPERIMENTER:
        exp_type = getattr(msg, "exp_type", None)
        names = [n for n in dir(ofp) if n.startswith("ONFERR_ET_") and getattr(ofp, n) == exp_type]
        return f"OFPET_EXPERIMENTER {names[0] if names else 'experimenter error'}({exp_type})"
    names = ofp.ofp_error_to_jsondict(msg.type, msg.code)
    return f"{names['type']} {names['code']}"


def _error_type(msg: Any) -> str:
    """``OFPET_BAD_ACTION``: the error's type alone, one of the protocol's few (a metric label;
    a type the protocol does not define is "unknown", so a switch cannot make up labels)."""
    name = ofp.ofp_error_type_to_str(msg.type).partition("(")[0]
    return name if name.startswith("OFPET_") else "unknown"


def _is_bundle_msg_failed(msg: Any) -> bool:
    """The commit's error when a message inside the bundle failed (OVS's OFPBFC_MSG_FAILED)."""
    return msg.type == ofp.OFPET_EXPERIMENTER and getattr(msg, "exp_type", None) == (
        ofp.ONFERR_ET_FAILED
    )


def _msg_type(msg: Any) -> str:
    """The type of the refused message, from the head of it that the error reply carries."""
    data = getattr(msg, "data", b"") or b""
    if isinstance(data, bytes) and len(data) >= 2:
        return f"{ofp.ofp_msg_type_to_str(data[1])} xid {msg.xid}"
    return f"xid {msg.xid}"


def _alive(dp: Any) -> bool:
    return bool(dp.is_active) and dp.state != DEAD_DISPATCHER


def _end(dp: Any, reason: str) -> None:
    """End a switch's connection from any thread (`LiveDatapath.end`: the socket is shut
    down, the connection's own thread then closes it and the app hears it is gone)."""
    end = getattr(dp, "end", None)
    if end is not None:
        end(reason)


def _close(dp: Any, reason: str) -> None:
    """End a connection now, from any thread, without waiting for anything.

    Only the socket is shut down (`LiveDatapath.end`); the connection's own thread then sees its
    receive loop end and calls os-ken's ``Datapath.close``.  Calling ``close`` here instead would
    be a self-deadlock when this runs on the app's event thread (a refusal in `_features`):
    ``close`` posts the DEAD state change to this app's bounded event queue and blocks while it
    is full, and the only thread that empties it is the one waiting.
    """
    end = getattr(dp, "end", None)
    if end is not None:
        end(reason)
        return
    with contextlib.suppress(OSError):
        dp.socket.shutdown(socket.SHUT_RDWR)


def _send_as_one_write(dp: Any, msgs: list[Any], direct: bool = False) -> bool:
    """Serialise the messages with os-ken and queue them as one buffer.

    `Datapath.send_msg` queues each message separately, and the connection's send thread wakes
    and writes once per message: for a diff of thousands of flow-mods those thread hand-offs cost
    more than the encoding.  This is `send_msg` (assign an xid, serialise) for many messages with
    a single `Datapath.send`; the order on the wire, and so OVS's processing order, is the same.
    False if the connection's send queue is full or closed (`LiveDatapath.send_nowait`).
    ``direct`` (a packet-out answered on a receive thread): written on this thread when the
    connection's send thread has nothing to write (`LiveDatapath.write_now`), saving its
    wake-up (see `controller.southbound.packet_in` for why only there).
    """
    return _send_buf(dp, _serialise(dp, msgs), direct)


def _serialise(dp: Any, msgs: list[Any]) -> bytes:
    """The messages as os-ken encodes them, one after the other (xids assigned if missing)."""
    bufs = []
    for msg in msgs:
        if msg.xid is None:
            dp.set_xid(msg)
        msg.serialize()
        bufs.append(msg.buf)
    return b"".join(bufs)


def _write_now(dp: Any, buf: bytes) -> Write:
    """Write ``buf`` now if the connection's send thread is idle (`LiveDatapath.write_now`),
    else queue it.  A buffer the direct write refused whole is queued as before: a socket
    that failed (the connection is going) then leaves the batch to the disconnect, as a queued
    one would be.  One whose stream was lost is not: the switch holds part of it, and
    anything queued behind that part would be read as garbage (`Write.LOST`)."""
    write_now = getattr(dp, "write_now", None)
    written = write_now(buf) if write_now is not None else Write.REFUSED
    if written is Write.LOST:
        return written
    return Write.TAKEN if written or _send_buf(dp, buf) else Write.REFUSED


def _send_buf(dp: Any, buf: bytes, direct: bool = False) -> bool:
    """Queue one encoded buffer without waiting (see `_send_as_one_write`)."""
    send = (direct and getattr(dp, "write_now", None)) or getattr(dp, "send_nowait", None)
    send = send or dp.send
    return bool(send(buf))
