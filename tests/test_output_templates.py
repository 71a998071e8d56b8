"""A malformed field template in an output's settings is a config error naming the file and the key (and the label
whose template it is), raised when the config loads — not an exception when the first record is shipped."""

from __future__ import annotations

from typing import Any

import pytest

from logagent import registry
from logagent.config import ComponentConfig, ConfigError, Section

SLS = {"endpoint": "cn-hangzhou.log.aliyuncs.com", "project": "p", "logstore": "l",
       "access_key_id": "id", "access_key_secret": "secret"}


@pytest.mark.parametrize(("kind", "settings", "expected"), [
    ("elasticsearch", {"url": "http://127.0.0.1:9200", "index": "logs-{kubernetes.namespace"},
     "outputs[0].index: unclosed '{' in template 'logs-{kubernetes.namespace'"),
    ("elasticsearch", {"url": "http://127.0.0.1:9200", "data_stream": "logs-{}-default"},
     "outputs[0].data_stream: empty field name in template 'logs-{}-default'"),
    ("loki", {"url": "http://127.0.0.1:3100", "labels": {"app": "{kubernetes.labels.app"}},
     "outputs[0].labels: app: unclosed '{' in template '{kubernetes.labels.app'"),
    ("loki", {"url": "http://127.0.0.1:3100", "structured_metadata": {"pod": "{|none}"}},
     "outputs[0].structured_metadata: pod: empty field name in template '{|none}'"),
    ("loki", {"url": "http://127.0.0.1:3100", "tenant": "team-{kubernetes.namespace"},
     "outputs[0].tenant: unclosed '{' in template 'team-{kubernetes.namespace'"),
    ("sls", {**SLS, "topic": "{kubernetes.pod"}, "outputs[0].topic: unclosed '{' in template '{kubernetes.pod'"),
])
def test_a_bad_template_names_the_file_and_key(kind: str, settings: dict[str, Any], expected: str) -> None:
    section = Section(dict(settings, type=kind, name="out"), "outputs[0]", "/etc/logagent/agent.yaml")
    section.str("type")
    section.str("name")
    with pytest.raises(ConfigError) as e:
        registry.parse_settings(ComponentConfig("output", kind, "out", section, ("*",)))
    assert str(e.value) == f"/etc/logagent/agent.yaml: {expected}"


@pytest.mark.parametrize(("kind", "settings"), [
    ("elasticsearch", {"url": "http://127.0.0.1:9200", "index": "logs-{kubernetes.namespace|system}-%Y.%m.%d"}),
    ("loki", {"url": "http://127.0.0.1:3100", "labels": {"app": "{kubernetes.labels.app|none}"},
              "tenant": "{kubernetes.namespace}"}),
    ("sls", {**SLS, "topic": "{kubernetes.namespace}/{kubernetes.pod}"}),
])
def test_a_good_template_is_kept_as_written(kind: str, settings: dict[str, Any]) -> None:
    section = Section(dict(settings, type=kind, name="out"), "outputs[0]", "/etc/logagent/agent.yaml")
    section.str("type")
    section.str("name")
    parsed = registry.parse_settings(ComponentConfig("output", kind, "out", section, ("*",)))
    for key in ("index", "tenant", "topic"):
        if key in settings:
            assert getattr(parsed, key) == settings[key]
    if "labels" in settings:
        assert dict(parsed.labels) == settings["labels"]
