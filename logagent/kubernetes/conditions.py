"""Node conditions for permanent kernel problems, the way Node Problem Detector sets them.

Which incidents set which condition type is configuration (`ConditionRule`): an incident whose headline
signatures include one of a rule's `signatures` (and whose fields match its `when` regexes) sets the condition to
`True` with `reason` = the signature and `message` = the headline, trimmed. Every configured type is reported from
the start, `False` with its "no problem" reason, as NPD does, so that `kubectl describe node` shows them all.

The state (`ConditionState`) lives in `<state_dir>/node-conditions.json` together with the boot id it was seen
in. A restart of the agent in the same boot keeps a `True` condition (the kernel does not print the problem again,
and the kmsg checkpoint does not read it again); a new boot id (a reboot) resets every condition to `False` with a
new transition time, as NPD does on a fresh boot.

What goes to the API server is a strategic merge patch of `/api/v1/nodes/<node>/status`: only our condition types,
merged by `type` (the list's patch merge key), so the kubelet's conditions are never touched. This module builds
bodies and keeps state; it does no network I/O (that is `problems.py`).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from logagent.kubernetes.client import now_rfc3339

STATE_FILE = "node-conditions.json"
MESSAGE_MAX = 1024  # what fits a `kubectl describe node` line; the API server takes more, nobody reads it


@dataclass(frozen=True)
class ConditionRule:
    type: str
    signatures: tuple[str, ...]
    ok_reason: str
    ok_message: str
    when: tuple[tuple[str, re.Pattern[str]], ...] = ()  # field -> regex the incident's field must match

    def matches(self, signatures: Iterable[str], fields: dict[str, Any]) -> str | None:
        """The signature this incident sets the condition with, or None."""
        for sig in signatures:
            if sig in self.signatures:
                if all(isinstance(fields.get(k), str) and p.search(fields[k]) for k, p in self.when):
                    return sig
        return None


# The shipped mapping. KernelDeadlock and ReadonlyFilesystem are NPD's own types (and reasons), read by draino,
# node-repair controllers and cluster-autoscaler setups; the others are ours.
DEFAULT_CONDITIONS: tuple[ConditionRule, ...] = (
    ConditionRule("KernelDeadlock", ("hung_task_blocked",), "KernelHasNoDeadlock", "kernel has no deadlock",
                  # NPD's DockerHung: a hung container runtime leaves the node unable to start or stop pods
                  (("comm", re.compile(r"^(?:dockerd?|containerd(?:-shim\S*)?|crio|conmon|runc|kubelet)$")),)),
    ConditionRule("ReadonlyFilesystem", ("fs_remount_readonly", "btrfs_forced_readonly"),
                  "FilesystemIsNotReadOnly", "Filesystem is not read-only"),
    ConditionRule("FilesystemShutdown", ("xfs_shutdown",), "FilesystemIsNotShutdown", "no filesystem shut down"),
    ConditionRule("GPUFallenOffBus", ("gpu_fallen_off_bus",), "GPUsAreOnTheBus", "no GPU fell off the bus"),
    ConditionRule("NetworkDeviceWatchdog", ("netdev_tx_timeout",), "NoNetworkDeviceWatchdog",
                  "no transmit queue timed out"),
)


def parse_condition_rules(section: Any) -> tuple[ConditionRule, ...]:
    """`conditions:` of the node_problems stage: a list of {type, signatures, reason_ok, message_ok, when}; absent
    means the shipped mapping, `[]` means none."""
    if not section.has("conditions"):
        return DEFAULT_CONDITIONS
    rules: list[ConditionRule] = []
    for sub in section.sections("conditions"):
        ctype = sub.str("type")
        if not re.fullmatch(r"[A-Z][A-Za-z0-9]*", ctype):
            raise sub.error(f"expected a CamelCase condition type, got {ctype!r}", "type")
        when: list[tuple[str, re.Pattern[str]]] = []
        for k, v in sub.str_map("when", {}).items():
            try:
                when.append((k, re.compile(v)))
            except re.error as e:
                raise sub.error(f"invalid regex {v!r}: {e}", f"when.{k}") from None
        sigs = tuple(sub.str_list("signatures"))
        if not sigs:
            raise sub.error("expected at least one signature", "signatures")
        rules.append(ConditionRule(ctype, sigs, sub.str("reason_ok", f"No{ctype}"),
                                   sub.str("message_ok", f"no {ctype} problem"), tuple(when)))
        sub.done()
    types = [r.type for r in rules]
    dup = sorted({t for t in types if types.count(t) > 1})
    if dup:
        raise section.error(f"condition type(s) listed twice: {', '.join(dup)}", "conditions")
    return tuple(rules)


def trim(text: str, limit: int = MESSAGE_MAX) -> str:
    text = " ".join(text.split())
    if len(text.encode()) <= limit:
        return text
    return text.encode()[: limit - 3].decode("utf-8", "ignore") + "..."


@dataclass
class ConditionState:
    """Our conditions on this node, persisted with the boot id they were seen in."""

    path: str
    rules: tuple[ConditionRule, ...]
    boot_id: str
    conditions: dict[str, dict[str, Any]] = field(default_factory=dict)  # type -> the Kubernetes condition
    reset_by_reboot: bool = False  # set by load(): the stored state was from another boot

    @classmethod
    def load(cls, state_dir: str, rules: tuple[ConditionRule, ...], boot_id: str) -> ConditionState:
        st = cls(os.path.join(state_dir, STATE_FILE), rules, boot_id)
        stored: dict[str, Any] = {}
        try:
            with open(st.path, encoding="utf-8") as f:
                doc = json.load(f)
            if isinstance(doc, dict):
                stored = doc
        except FileNotFoundError:
            pass
        except (OSError, ValueError):
            stored = {}  # unreadable: start clean (every condition False); the file is rewritten below
        same_boot = stored.get("boot_id") == boot_id
        st.reset_by_reboot = bool(stored) and not same_boot
        now = now_rfc3339()
        old = stored.get("conditions") if same_boot and isinstance(stored.get("conditions"), dict) else {}
        for r in rules:
            cond = old.get(r.type) if isinstance(old, dict) else None
            if isinstance(cond, dict) and cond.get("status") in ("True", "False"):
                st.conditions[r.type] = {**cond, "type": r.type}
            else:
                st.conditions[r.type] = {"type": r.type, "status": "False", "reason": r.ok_reason,
                                         "message": r.ok_message, "lastTransitionTime": now}
        st.save()
        return st

    def save(self) -> None:
        d = os.path.dirname(self.path) or "."
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".node-conditions.", dir=d)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"boot_id": self.boot_id, "conditions": self.conditions}, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def apply(self, signatures: list[str], fields: dict[str, Any], headline: str) -> list[str]:
        """An incident: the condition types it changed (now True, with this headline). Types already True keep
        their transition time and take the latest message."""
        changed: list[str] = []
        for r in self.rules:
            sig = r.matches(signatures, fields)
            if sig is None:
                continue
            cond = self.conditions[r.type]
            was = (cond.get("status"), cond.get("reason"), cond.get("message"))
            cond.update(status="True", reason=sig, message=trim(headline))
            if was[0] != "True":
                cond["lastTransitionTime"] = now_rfc3339()
            if was != (cond["status"], cond["reason"], cond["message"]):
                changed.append(r.type)
        if changed:
            self.save()
        return changed

    def patch_body(self, types: Iterable[str] | None = None) -> dict[str, Any]:
        """The strategic merge patch for nodes/status: our conditions only, each with a fresh heartbeat."""
        now = now_rfc3339()
        chosen = self.conditions if types is None else {t: self.conditions[t] for t in types}
        return {"status": {"conditions": [{**c, "lastHeartbeatTime": now} for c in chosen.values()]}}


def read_boot_id(path: str) -> str:
    with open(path, encoding="ascii") as f:
        value = f.read().strip()
    if not value:
        raise ValueError(f"{path}: empty boot id")
    return value
