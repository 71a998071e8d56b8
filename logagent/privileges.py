"""The Linux capabilities the agent needs on a node, and why: the one list the deployment files are checked against.

`conf/systemd/logagent.service` (CapabilityBoundingSet / AmbientCapabilities) and the DaemonSet in
`conf/kubernetes/` (securityContext.capabilities.add, everything else dropped) must grant exactly these; the
operations tests compare them. Adding a capability to a deployment file without adding it here (with the reason)
fails those tests, so privileges only grow on purpose.

This module must never grant, request or probe anything at runtime: it is documentation the tests can read.
"""

from __future__ import annotations

# name -> what breaks without it
REQUIRED_CAPABILITIES: dict[str, str] = {
    # Container logs under /var/log/pods are 0640 root:root, host logs are often 0640 syslog:adm, journal files
    # are group systemd-journal: read them without owning them. Read-only by nature, unlike CAP_DAC_OVERRIDE.
    "CAP_DAC_READ_SEARCH": "read log files and journal files owned by other users",
    # With kernel.dmesg_restrict=1 (the default on Debian, Ubuntu, RHEL) reading /dev/kmsg needs CAP_SYSLOG.
    "CAP_SYSLOG": "read /dev/kmsg when kernel.dmesg_restrict=1",
}


def kubernetes_names() -> set[str]:
    """The same capabilities as Kubernetes spells them in `securityContext.capabilities` (no CAP_ prefix)."""
    return {name.removeprefix("CAP_") for name in REQUIRED_CAPABILITIES}
