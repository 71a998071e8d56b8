"""The config as the agent will run it, for `logagent check`: every key a component read, with the defaults it
took and `${VAR}` expanded, in the order the components read them. Secrets are masked: keys read as secrets
(`Section.secret`) and keys whose name says they hold one (`password`, `bearer_token`, an `Authorization`
header...). `{env: NAME}` / `{file: PATH}` references are shown as written: they name a secret, not hold it.

Never used on the hot path; only after `load_config` has validated (and so read) everything.
"""

from __future__ import annotations

import re
from typing import Any

from logagent.config import AgentConfig, Section

MASK = "***"
_SECRET_NAME = re.compile(r"(password|passwd|secret|token|authorization|api[-_]?key|cookie)$", re.IGNORECASE)


def resolved_config(cfg: AgentConfig) -> dict[str, Any]:
    return resolved_section(cfg.top)


def resolved_section(section: Section) -> dict[str, Any]:
    return {key: _render(value, key in section.secrets or bool(_SECRET_NAME.search(key)))
            for key, value in section.resolved.items()}


def _render(value: Any, masked: bool) -> Any:
    if isinstance(value, Section):
        return resolved_section(value)
    if isinstance(value, (list, tuple)):
        return [_render(v, masked) for v in value]
    if isinstance(value, dict):
        if masked and len(value) == 1 and next(iter(value)) in ("env", "file"):
            return dict(value)  # a reference to the secret
        return {str(k): _render(v, masked or bool(_SECRET_NAME.search(str(k)))) for k, v in value.items()}
    if masked and isinstance(value, str) and value:
        return MASK
    return value
