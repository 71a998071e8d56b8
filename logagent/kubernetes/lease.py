"""Leader election with a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does it.

    GET   /apis/coordination.k8s.io/v1/namespaces/<ns>/leases/<name>
    POST  .../leases              (none yet: create it holding it; 409 AlreadyExists = someone was faster)
    PUT   .../leases/<name>       (take over or renew; carries metadata.resourceVersion, so of two electors
                                   racing for an expired lease exactly one succeeds and the other gets 409)

A lease held by another identity counts as expired when `leaseDurationSeconds` passed on *our* monotonic clock
since we last saw it change (holder, renewTime, resourceVersion), not by comparing its renewTime with our wall
clock: node clocks drift. The leader renews every `retry_period`; when it cannot renew within `renew_deadline` it
stops acting as leader (before the lease can expire for the others: renew_deadline < lease_duration). On shutdown
it releases the lease (empty holder, duration 1 s) so a follower takes over at once instead of after expiry.

The leader may keep a few annotations on the Lease (`annotations()` callback, written with every renew), which
is how the cluster-events input hands its acknowledged position to the next leader.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from logagent.kubernetes.api import ApiError, Conflict, NotFound
from logagent.kubernetes.client import ApiClient, now_rfc3339

log = logging.getLogger("logagent.kubernetes.lease")

_ERRORS = (asyncio.TimeoutError, OSError, ApiError)


class LeaderElector:
    def __init__(self, client: ApiClient, namespace: str, name: str, identity: str, *,
                 lease_duration: float = 15.0, renew_deadline: float = 10.0, retry_period: float = 2.0,
                 annotations: Callable[[], dict[str, str]] | None = None) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("expected retry_period < renew_deadline < lease_duration")
        self.client = client
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_duration, self.renew_deadline, self.retry_period = lease_duration, renew_deadline, retry_period
        self.annotations = annotations or (lambda: {})
        self.lease: dict[str, Any] | None = None  # the last Lease we read or wrote
        self.is_leader = False
        self.transitions = 0  # times this elector became leader
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0

    @property
    def holder(self) -> str | None:
        return ((self.lease or {}).get("spec") or {}).get("holderIdentity") or None

    def annotation(self, key: str) -> str | None:
        value = ((self.lease or {}).get("metadata") or {}).get("annotations", {}).get(key)
        return str(value) if value is not None else None

    # -- one attempt ----------------------------------------------------------------------------------------
    async def try_acquire_or_renew(self) -> bool:
        now = now_rfc3339(micro=True)
        duration = max(1, int(round(self.lease_duration)))
        try:
            lease = await self.client.request("GET", f"{self.path}/{self.name}")
        except NotFound:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace, "annotations": self.annotations()},
                    "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": duration,
                             "acquireTime": now, "renewTime": now, "leaseTransitions": 0}}
            try:
                self.lease = await self.client.request("POST", self.path, body)
            except Conflict:
                return False
            return True
        self.lease = lease
        spec = lease.get("spec") or {}
        meta = lease.get("metadata") or {}
        holder = spec.get("holderIdentity") or ""
        seen = (holder, spec.get("renewTime"), meta.get("resourceVersion"))
        if seen != self._observed:
            self._observed, self._observed_at = seen, time.monotonic()
        held_for = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        if holder and holder != self.identity and time.monotonic() < self._observed_at + held_for:
            return False  # someone else holds it and it has not expired
        ours = holder == self.identity
        new_spec = {**spec, "holderIdentity": self.identity, "leaseDurationSeconds": duration, "renewTime": now,
                    "acquireTime": spec.get("acquireTime") if ours and spec.get("acquireTime") else now,
                    "leaseTransitions": int(spec.get("leaseTransitions") or 0) + (0 if ours else 1)}
        annotations = {**(meta.get("annotations") or {}), **self.annotations()}
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {**meta, "annotations": annotations}, "spec": new_spec}
        try:
            self.lease = await self.client.request("PUT", f"{self.path}/{self.name}", body)
        except (Conflict, NotFound):
            return False  # changed under us (another elector won the race) or deleted: try again later
        return True

    # -- the loops ------------------------------------------------------------------------------------------
    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until we lead (True) or `stop` is set (False)."""
        while not stop.is_set():
            try:
                if await self.try_acquire_or_renew():
                    self.is_leader = True
                    self.transitions += 1
                    log.info("became leader", extra={"lease": f"{self.namespace}/{self.name}",
                                                     "identity": self.identity})
                    return True
            except _ERRORS as e:
                log.warning("lease request failed", extra={"error": f"{type(e).__name__}: {str(e)[:200]}"})
            try:
                await asyncio.wait_for(stop.wait(), self.retry_period * random.uniform(1.0, 1.2))
            except asyncio.TimeoutError:
                pass
        return False

    async def hold(self) -> None:
        """Renew until leadership is lost (returns then). Cancel it to stop renewing."""
        while True:
            await asyncio.sleep(self.retry_period)
            deadline = time.monotonic() + self.renew_deadline
            while True:
                try:
                    renewed = await asyncio.wait_for(self.try_acquire_or_renew(),
                                                     max(0.1, deadline - time.monotonic()))
                except (*_ERRORS, asyncio.TimeoutError) as e:
                    renewed = False
                    log.warning("lease renewal failed", extra={"error": f"{type(e).__name__}: {str(e)[:200]}"})
                if renewed:
                    break
                if self.holder not in (None, self.identity) or time.monotonic() >= deadline:
                    self.is_leader = False
                    log.warning("lost leadership", extra={"lease": f"{self.namespace}/{self.name}",
                                                          "holder": self.holder})
                    return
                await asyncio.sleep(min(self.retry_period, max(0.0, deadline - time.monotonic())))

    async def release(self) -> None:
        """Give the lease up (shutdown): empty holder, so a follower need not wait for it to expire."""
        if not self.is_leader or self.lease is None:
            return
        self.is_leader = False
        meta = self.lease.get("metadata") or {}
        spec = {**(self.lease.get("spec") or {}), "holderIdentity": "", "leaseDurationSeconds": 1,
                "renewTime": now_rfc3339(micro=True)}
        annotations = {**(meta.get("annotations") or {}), **self.annotations()}
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {**meta, "annotations": annotations}, "spec": spec}
        try:
            self.lease = await self.client.request("PUT", f"{self.path}/{self.name}", body)
            log.info("released the lease", extra={"lease": f"{self.namespace}/{self.name}"})
        except _ERRORS as e:
            log.warning("releasing the lease failed; it expires on its own",
                        extra={"error": f"{type(e).__name__}: {str(e)[:200]}"})
