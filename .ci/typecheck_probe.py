"""Checked by .ci/lint together with the package: mypy must see through the package-dir mapping, so a value
imported from logagent.inputs / logagent.outputs has its real type, not Any (assert_type fails on Any), and the
wiring between components (the registry, the delivery engine, `ctx.services`) stays typed."""

from typing import Any, assert_type

from logagent import registry
from logagent.component import Context, Input, Output
from logagent.config import ComponentConfig
from logagent.delivery import Codec, Delivery
from logagent.inputs.file import FileInput
from logagent.inputs.file.settings import FileSettings
from logagent.inputs.kmsg import read_boot_id
from logagent.outputs.elasticsearch import ElasticsearchOutput, ElasticsearchSettings
from logagent.outputs.loki import LokiOutput, label_string
from logagent.outputs.loki_answers import Item as LokiItem
from logagent.services import FileOverrides, PodLookup

assert_type(read_boot_id("/proc/sys/kernel/random/boot_id"), str)
assert_type(label_string([("a", "b")]), str)


def probe(es: ElasticsearchOutput, loki: LokiOutput, file: FileInput, comp: ComponentConfig, ctx: Context) -> None:
    assert_type(es.settings, ElasticsearchSettings)
    assert_type(es.codec, Codec[bytes])
    assert_type(es.delivery, Delivery[bytes])
    assert_type(loki.codec, Codec[LokiItem])
    assert_type(file.settings, FileSettings)
    assert_type(registry.build_input(comp, ctx), Input[Any])
    assert_type(registry.build_output(comp, ctx), Output[Any])
    assert_type(ctx.services.file_overrides, FileOverrides | None)
    kubernetes = ctx.services.kubernetes
    if kubernetes is not None:
        pods: PodLookup = kubernetes.cache
        assert_type(pods.by_uid("uid"), dict[str, Any] | None)
