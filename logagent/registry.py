"""Component types by name. Types are imported lazily so that a missing optional dependency (systemd-python)
only matters to configs that use it; each is checked against its kind's base class when it is loaded, so what
`build_input`/`build_stage`/`build_output` return is typed (`Input`/`Stage`/`Output`), not `Any`."""

from __future__ import annotations

import importlib
from typing import Any, NoReturn

from logagent.component import Component, Context, Input, Output, Stage
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
_BASES: dict[str, type] = {"input": Input, "stage": Stage, "output": Output}


def component_class(comp: ComponentConfig) -> type[Component[Any]]:
    target = _TABLES[comp.kind][comp.type]
    module_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(
            f"{comp.section.file}: {comp.section.path}.type: {comp.kind} type {comp.type!r} is not available "
            f"here: {e}"
        ) from None
    cls = getattr(module, cls_name)
    base = _BASES[comp.kind]
    if not (isinstance(cls, type) and issubclass(cls, base) and issubclass(cls, Component)):
        raise TypeError(f"registry: {target} is not a subclass of {base.__name__}")  # a bug here, not in the config
    return cls


def parse_settings(comp: ComponentConfig) -> Any:
    cls = component_class(comp)
    return cls.parse_settings(comp.section)


def validate(cfg: AgentConfig) -> None:
    from logagent.http import parse_server_settings

    for comp in (*cfg.inputs, *cfg.stages, *cfg.outputs):
        parse_settings(comp)
    parse_server_settings(cfg.http)


def build_input(comp: ComponentConfig, ctx: Context) -> Input[Any]:
    built = _build(comp, ctx)
    return built if isinstance(built, Input) else _wrong_kind(comp, built)


def build_stage(comp: ComponentConfig, ctx: Context) -> Stage[Any]:
    built = _build(comp, ctx)
    return built if isinstance(built, Stage) else _wrong_kind(comp, built)


def build_output(comp: ComponentConfig, ctx: Context) -> Output[Any]:
    built = _build(comp, ctx)
    return built if isinstance(built, Output) else _wrong_kind(comp, built)


def _wrong_kind(comp: ComponentConfig, built: Component[Any]) -> NoReturn:
    raise TypeError(f"registry: {comp.kind} type {comp.type!r} built a {type(built).__name__}")


def _build(comp: ComponentConfig, ctx: Context) -> Component[Any]:
    cls = component_class(comp)
    return cls(comp.name, cls.parse_settings(comp.section), ctx)
