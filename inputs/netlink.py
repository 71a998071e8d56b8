"""`netlink` input: node network events from rtnetlink — link up/down, carrier lost/regained, links added and
removed, and neighbour-table entries that appear, fail (unresolvable address) or are deleted.

At start the input dumps the current links and neighbours (of its network namespace, or of the one named by
`namespace`), so that later notifications are read as transitions: `link_down` is emitted when a link that was
administratively up goes down, not for every RTM_NEWLINK the kernel sends. Events are live state: there is no
position to checkpoint, and nothing is replayed after a restart. This module must never change network state; it
only listens.
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
from dataclasses import dataclass
from typing import Any

from logagent import metrics
from logagent.component import Context, Emit, Input
from logagent.config import Section
from logagent.record import Batch, Record
from logagent.timefmt import format_rfc3339_ns

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
# Neighbour states (include/uapi/linux/neighbour.h)
NUD_STATES = {0x01: "incomplete", 0x02: "reachable", 0x04: "stale", 0x08: "delay", 0x10: "probe",
              0x20: "failed", 0x40: "noarp", 0x80: "permanent", 0x00: "none"}
NUD_FAILED = 0x20
LEVEL_WARNING, LEVEL_NOTICE, LEVEL_INFO = 4, 5, 6


@dataclass(frozen=True)
class NetlinkSettings:
    tag: str
    namespace: str | None
    interfaces: tuple[str, ...]  # globs; empty = every interface
    links: bool
    neighbours: bool


@dataclass
class LinkState:
    name: str
    up: bool
    carrier: bool


class NodeNetworkState:
    """Links and neighbours as last seen; turns rtnetlink messages into transition events."""

    def __init__(self, interfaces: tuple[str, ...] = ()) -> None:
        self.links: dict[int, LinkState] = {}
        self.neighbours: set[tuple[int, str]] = set()
        self.interfaces = interfaces

    def _wanted(self, name: str) -> bool:
        return not self.interfaces or any(fnmatch.fnmatchcase(name, g) for g in self.interfaces)

    def learn_link(self, msg: Any) -> None:
        flags = msg["flags"]
        self.links[msg["index"]] = LinkState(msg.get("ifname") or str(msg["index"]), bool(flags & IFF_UP),
                                             bool(flags & IFF_LOWER_UP))

    def learn_neighbour(self, msg: Any) -> None:
        dst = msg.get("NDA_DST")
        if dst is not None:
            self.neighbours.add((msg["ifindex"], dst))

    def events(self, msg: Any) -> list[Record]:
        kind = msg.get("event")
        if kind in ("RTM_NEWLINK", "RTM_DELLINK"):
            return self._link_events(msg, deleted=kind == "RTM_DELLINK")
        if kind in ("RTM_NEWNEIGH", "RTM_DELNEIGH"):
            return self._neighbour_events(msg, deleted=kind == "RTM_DELNEIGH")
        return []

    def _link_events(self, msg: Any, deleted: bool) -> list[Record]:
        index = msg["index"]
        name = msg.get("ifname") or (self.links[index].name if index in self.links else str(index))
        flags = msg["flags"]
        up, carrier = bool(flags & IFF_UP), bool(flags & IFF_LOWER_UP)
        old = self.links.get(index)
        base = {"interface": name, "ifindex": index, "operstate": msg.get("operstate"), "admin_up": up,
                "carrier": carrier}
        if deleted:
            self.links.pop(index, None)
            return [self._event(f"link {name} removed", "link_removed", LEVEL_NOTICE, base)] \
                if self._wanted(name) else []
        self.links[index] = LinkState(name, up, carrier)
        if not self._wanted(name):
            return []
        if old is None:
            return [self._event(f"link {name} added", "link_added", LEVEL_INFO, base)]
        out: list[Record] = []
        if old.up != up:
            # Going down drops the carrier too; that is part of link_down, not a separate carrier_lost.
            out.append(self._event(f"link {name} {'up' if up else 'down'}", "link_up" if up else "link_down",
                                   LEVEL_INFO if up else LEVEL_WARNING, base))
        elif up and old.carrier != carrier:
            out.append(self._event(f"link {name} carrier {'up' if carrier else 'lost'}",
                                   "carrier_up" if carrier else "carrier_lost",
                                   LEVEL_INFO if carrier else LEVEL_WARNING, base))
        return out

    def _neighbour_events(self, msg: Any, deleted: bool) -> list[Record]:
        index = msg["ifindex"]
        dst = msg.get("NDA_DST")
        if dst is None:
            return []
        link = self.links.get(index)
        name = link.name if link is not None else str(index)
        state = msg.get("state", 0)
        key = (index, dst)
        base: dict[str, Any] = {"interface": name, "ifindex": index, "address": dst,
                                "state": NUD_STATES.get(state, hex(state))}
        lladdr = msg.get("NDA_LLADDR")
        if lladdr:
            base["lladdr"] = lladdr
        if deleted:
            known = key in self.neighbours
            self.neighbours.discard(key)
            if not known or not self._wanted(name):
                return []
            return [self._event(f"neighbour {dst} on {name} deleted", "neigh_deleted", LEVEL_INFO, base)]
        new = key not in self.neighbours
        self.neighbours.add(key)
        if not self._wanted(name):
            return []
        if state & NUD_FAILED:
            if not msg.get("NDA_PROBES"):
                # An administrative delete (`ip neigh del`, a flush) first marks the entry FAILED without having
                # probed, then deletes it: that is reported as neigh_deleted, not as a resolution failure.
                return []
            base["probes"] = msg.get("NDA_PROBES")
            return [self._event(f"neighbour {dst} on {name} failed", "neigh_failed", LEVEL_WARNING, base)]
        if new:
            return [self._event(f"neighbour {dst} on {name} added ({base['state']})", "neigh_new", LEVEL_INFO,
                                base)]
        return []

    @staticmethod
    def _event(message: str, event: str, level: int, fields: dict[str, Any]) -> Record:
        ts = time.time_ns()
        return {"message": message, "event": event, "level": level, "time": format_rfc3339_ns(ts), "time_ns": ts,
                **{k: v for k, v in fields.items() if v is not None}}


class NetlinkInput(Input[NetlinkSettings]):
    settings: NetlinkSettings

    @classmethod
    def parse_settings(cls, section: Section) -> NetlinkSettings:
        s = NetlinkSettings(
            tag=section.str("tag", "node"),
            namespace=section.str("namespace", None),
            interfaces=tuple(section.str_list("interfaces", [])),
            links=section.bool("links", True),
            neighbours=section.bool("neighbours", True),
        )
        if not (s.links or s.neighbours):
            raise section.error("links and neighbours are both off: nothing to listen to", "neighbours")
        section.done()
        return s

    def __init__(self, name: str, settings: NetlinkSettings, ctx: Context) -> None:
        super().__init__(name, settings, ctx)
        self._stop = asyncio.Event()
        self.opened = False  # links dumped and subscribed (for tests and status): changes from now are seen
        self.state = NodeNetworkState(settings.interfaces)

    async def stop(self) -> None:
        self._stop.set()

    async def run(self, emit: Emit) -> None:
        from pyroute2 import AsyncIPRoute
        from pyroute2.netlink.rtnl import RTMGRP_LINK, RTMGRP_NEIGH

        s = self.settings
        groups = (RTMGRP_LINK if s.links else 0) | (RTMGRP_NEIGH if s.neighbours else 0)
        try:
            ipr = AsyncIPRoute(netns=s.namespace) if s.namespace else AsyncIPRoute()
            # Subscribe before the dump: a change between the two is then seen (at worst twice), never missed.
            await ipr.bind(groups=groups)
            async for link in await ipr.link("dump"):
                self.state.learn_link(link)
            if s.neighbours:
                async for neigh in await ipr.neigh("dump"):
                    self.state.learn_neighbour(neigh)
        except Exception as e:
            metrics.ERRORS.labels(component=self.name, kind="open_failed").inc()
            self.log.error("cannot listen to rtnetlink", extra={"namespace": s.namespace, "error": str(e)})
            raise
        self.opened = True
        meta = {"input": self.name, "source": "netlink"}
        if s.namespace:
            meta["namespace"] = s.namespace

        async def receive() -> list[Any]:
            return [msg async for msg in ipr.get()]

        stopping = asyncio.create_task(self._stop.wait())
        try:
            while not self._stop.is_set():
                reading = asyncio.create_task(receive())
                await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not reading.done():
                    reading.cancel()
                    break
                records: list[Record] = []
                for msg in reading.result():
                    records.extend(self.state.events(msg))
                if records:
                    await emit(Batch(s.tag, records, meta))
        finally:
            stopping.cancel()
            ipr.close()
