"""Component types by name. Types are imported lazily so that a missing optional dependency (systemd-python)
only matters to configs that use it."""

from __future__ import annotations

import importlib
from typing import Any

from logagent.config import AgentConfig, ComponentConfig, ConfigError

INPUTS: dict[str, str] = {
    "file": "logagent.inputs.file:FileInput",
    "kmsg": "logagent.inputs.kmsg:KmsgInput",
    "journal": "logagent.inputs.journal:JournalInput",
    "netlink": "logagent.inputs.netlink:NetlinkInput",
    "kube_events": "logagent.inputs.kube_events:KubeEventsInput",
}
STAGES: dict[str, str] = {
    "kubernetes": "logagent.kubernetes.stage:KubernetesMetadata",
    "json": "logagent.parsers.jsonbody:JsonBody",
    "signatures": "logagent.signatures.stage:SignatureDetector",
    "node_problems": "logagent.kubernetes.problems:NodeProblems",
}
OUTPUTS: dict[str, str] = {
    "stdout": "logagent.outputs.stdout:StdoutOutput",
    "file": "logagent.outputs.file:FileOutput",
    "elasticsearch": "logagent.outputs.elasticsearch:ElasticsearchOutput",
    "victorialogs": "logagent.outputs.victorialogs:VictoriaLogsOutput",
    "loki": "logagent.outputs.loki:LokiOutput",
    "sls": "logagent.outputs.sls:SlsOutput",
    "sidecar": "logagent.outputs.sidecar:SidecarOutput",
}
_TABLES = {"input": INPUTS, "stage": STAGES, "output": OUTPUTS}


def component_class(comp: ComponentConfig) -> Any:
    target = _TABLES[comp.kind][comp.type]
    module_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(
            f"{comp.section.file}: {comp.section.path}.type: {comp.kind} type {comp.type!r} is not available "
            f"here: {e}"
        ) from None
    return getattr(module, cls_name)


def parse_settings(comp: ComponentConfig) -> Any:
    cls = component_class(comp)
    return cls.parse_settings(comp.section)


def validate(cfg: AgentConfig) -> None:
    from logagent.http import parse_server_settings

    for comp in (*cfg.inputs, *cfg.stages, *cfg.outputs):
        parse_settings(comp)
    parse_server_settings(cfg.http)


def build(comp: ComponentConfig, ctx: Any) -> Any:
    cls = component_class(comp)
    return cls(comp.name, cls.parse_settings(comp.section), ctx)
