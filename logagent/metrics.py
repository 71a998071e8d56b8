"""The agent's own metrics (Prometheus), defined once so every component uses the same names.

Components increment these with batch-level calls (`inc(len(records))`), never per record.
"""

from __future__ import annotations

from logagent.metricslib import CONTENT_TYPE as CONTENT_TYPE
from logagent.metricslib import CollectorRegistry, Counter, Gauge, ProcessCollector, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)
# process_cpu_seconds_total, process_resident_memory_bytes, open fds...: what an operator checks first.
ProcessCollector(registry=REGISTRY)

RECORDS_IN = Counter("logagent_input_records_total", "Records read by an input", ["input"], registry=REGISTRY)
BYTES_IN = Counter("logagent_input_bytes_total", "Bytes read by an input", ["input"], registry=REGISTRY)
RECORDS_OUT = Counter(
    "logagent_output_records_total", "Records acknowledged by an output's backend", ["output"], registry=REGISTRY
)
BYTES_OUT = Counter(
    "logagent_output_bytes_total", "Request body bytes sent by an output (after encoding)", ["output"],
    registry=REGISTRY,
)
ERRORS = Counter(
    "logagent_errors_total", "Errors by component and kind", ["component", "kind"], registry=REGISTRY
)
RETRIES = Counter("logagent_output_retries_total", "Requests retried by an output", ["output"], registry=REGISTRY)
DEAD_LETTERED = Counter(
    "logagent_dead_lettered_records_total", "Records written to the dead-letter file", ["output", "reason"],
    registry=REGISTRY,
)
DROPPED = Counter(
    "logagent_dropped_records_total", "Records dropped on purpose, by reason (e.g. excluded pod)",
    ["component", "reason"], registry=REGISTRY,
)
FLAGGED = Counter(
    "logagent_flagged_records_total",
    "Records kept but flagged (truncated, invalid_utf8, unparsed...)", ["component", "flag"], registry=REGISTRY,
)
QUEUE_DEPTH = Gauge("logagent_queue_batches", "Batches waiting in a queue", ["queue"], registry=REGISTRY)
INFLIGHT = Gauge("logagent_output_inflight_batches", "Batches an output holds unacknowledged", ["output"],
                 registry=REGISTRY)
FILES_TRACKED = Gauge("logagent_files_tracked", "Files an input is following", ["input"], registry=REGISTRY)
FILE_LAG = Gauge(
    "logagent_file_lag_bytes", "File size minus checkpointed offset", ["input", "path"], registry=REGISTRY
)
ROTATIONS = Counter("logagent_file_rotations_total", "Rotations seen, by kind", ["input", "kind"], registry=REGISTRY)
KERNEL_SIGNATURES = Counter(
    "logagent_kernel_signatures_total", "Kernel/node problem incidents by category and signature",
    ["category", "signature"], registry=REGISTRY,
)
CONFIG_RELOADS = Counter(
    "logagent_config_reloads_total", "Config reloads by result (applied, rejected)", ["result"], registry=REGISTRY
)
CONFIG_LAST_RELOAD_OK = Gauge(
    "logagent_config_last_reload_successful",
    "1 if the last config reload was applied, 0 if rejected (1 at start: the config the agent started with)",
    registry=REGISTRY,
)
CONFIG_LAST_RELOAD_OK.set(1)
KMSG_LOST = Counter(
    "logagent_kmsg_lost_records_total",
    "Kernel log records overwritten in the ring buffer before the kmsg input read them (sequence gaps)",
    ["input"], registry=REGISTRY,
)
KERNEL_CONDITIONS = Gauge(
    "logagent_kernel_node_condition",
    "Permanent kernel problems seen on this node (1 until the agent restarts): read-only remounts, XFS shutdowns, "
    "lost GPUs",
    ["signature", "device"], registry=REGISTRY,
)
NODE_PROBLEMS = Counter(
    "logagent_node_problems_total",
    "Kernel incidents reported to Kubernetes, by reason (the signature); Node Problem Detector's problem_counter",
    ["reason"], registry=REGISTRY,
)
NODE_PROBLEM_CONDITION = Gauge(
    "logagent_node_problem_condition",
    "1 while the node condition `type` is True with `reason`; Node Problem Detector's problem_gauge",
    ["type", "reason"], registry=REGISTRY,
)
FILE_DROPPED_BYTES = Counter(
    "logagent_file_dropped_bytes_total",
    "File bytes that could not be read, by reason (truncated_unread, deleted_while_down, max_open_files)",
    ["input", "reason"], registry=REGISTRY,
)
INPUT_DEGRADED = Gauge(
    "logagent_input_degraded",
    "1 while an input runs degraded (e.g. the file input without inotify, on stat polling only)",
    ["input", "reason"], registry=REGISTRY,
)


def exposition() -> bytes:
    """The text format of everything in REGISTRY: what `/metrics` answers."""
    return bytes(generate_latest(REGISTRY))
