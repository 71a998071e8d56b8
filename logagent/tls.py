"""A TLS stack only in an agent whose config can need one (issue 11: idle memory).

`import ssl` costs an idle agent ~4.8 MB of RSS (libssl/libcrypto pages and OpenSSL's tables), and uvloop cannot
be imported without it (~1.2 MB more). `logagent run` reads its config before anything imports asyncio, asks
`uses(cfg)` what in it can need TLS and, when nothing can, calls `disable()`: `ssl` then cannot be imported in
this process (asyncio treats it as absent, as on a Python built without OpenSSL) and the agent runs on the stdlib
asyncio loop instead of uvloop.

What can need TLS (`uses`), each named by its key path:
- any string in an input, stage or output, or in `http`, that is an `https://` URL (after `${VAR}` expansion);
- any non-empty `tls:` mapping (its CA and certificate files are checked with `ssl` when the config is loaded);
- an sls output without `url` (it sends to `https://<project>.<endpoint>`);
- the Kubernetes API (the kubernetes stage unless `api: false`, node_problems, kube_events): in a cluster
  (`KUBERNETES_SERVICE_HOST`) or with a `kubeconfig` it is https; only an `api_server: http://...` is not;
- a component whose library imports `ssl` (netlink: pyroute2), and any type this table does not know.

A reload to a config that needs TLS, in a process started without it, restarts the agent in place
(`logagent.hotreload`): it stops gracefully and executes itself again with the same pid.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import TYPE_CHECKING, Any

from logagent.section import expand_env

if TYPE_CHECKING:
    from logagent.config import AgentConfig, ComponentConfig

# (kind, type) whose own behaviour never needs TLS: only an https URL or a `tls:` mapping in its settings does.
_PLAIN = frozenset({
    ("input", "file"), ("input", "kmsg"), ("input", "journal"),
    ("stage", "json"), ("stage", "signatures"),
    ("output", "stdout"), ("output", "file"), ("output", "sidecar"),
    ("output", "elasticsearch"), ("output", "loki"), ("output", "victorialogs"),  # `url` is required
})
# (kind, type) -> why it needs TLS whatever its settings say
_ALWAYS = {("input", "netlink"): "pyroute2 imports ssl"}
_KUBE_API = frozenset({("stage", "kubernetes"), ("stage", "node_problems"), ("input", "kube_events")})
_SSL_MODULES = ("ssl", "_ssl")


def uses(cfg: AgentConfig) -> list[str]:
    """What in the config can need TLS, as `key path: why`; empty when nothing can."""
    found: list[str] = []
    for comp in (*cfg.inputs, *cfg.stages, *cfg.outputs):
        found.extend(_component(comp))
    found.extend(_walk(cfg.http.data, cfg.http.path or "http"))
    return found


def _component(comp: ComponentConfig) -> Iterator[str]:
    where, data = comp.section.path, comp.section.data
    yield from _walk(data, where)
    key = (comp.kind, comp.type)
    if key in _ALWAYS:
        yield f"{where}: {comp.type} ({_ALWAYS[key]})"
    elif key in _KUBE_API:
        yield from _kube_api(comp, where, data)
    elif key == ("output", "sls"):
        if data.get("url") is None:
            yield f"{where}: sls sends to https://<project>.<endpoint> when no url is set"
    elif key not in _PLAIN:
        yield f"{where}: {comp.kind} type {comp.type!r} (not known to need no TLS)"


def _kube_api(comp: ComponentConfig, where: str, data: dict[str, Any]) -> Iterator[str]:
    """The API server as `ApiAccess.credentials()` finds it: kubeconfig, else `api_server`, else in-cluster."""
    if comp.type == "kubernetes" and data.get("api", True) is False:
        return
    if data.get("kubeconfig"):
        yield f"{where}.kubeconfig: the API server of a kubeconfig can be https"
    elif data.get("api_server") is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        yield f"{where}: the in-cluster API server (KUBERNETES_SERVICE_HOST) is https"
    # an api_server https:// URL is found by _walk; an http:// one needs no TLS


def _walk(value: Any, where: str) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            path = f"{where}.{k}"
            if k == "tls" and v:
                yield f"{path}: TLS settings"
            yield from _walk(v, path)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, f"{where}[{i}]")
    elif isinstance(value, str):
        try:
            text = expand_env(value) if "${" in value else value
        except KeyError:  # an unset variable: loading the config reports it (and the agent does not start)
            return
        if text.lstrip()[:6].lower() == "https:":
            yield f"{where}: an https URL"


class _Refuse:
    """A meta-path finder that refuses `ssl`: every `import ssl` raises an ImportError that says why."""

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if name in _SSL_MODULES:
            raise ImportError(f"{name} is not loaded in this agent process: nothing in its config needed TLS when "
                              f"it started (logagent.tls)", name=name)
        return None


_refuse = _Refuse()
_started_without = False  # `disable()` ran: asyncio was imported without ssl, the loop cannot do TLS


def disable() -> None:
    """Make `ssl` unimportable in this process. Call before anything imports asyncio (which then runs without
    ssl); ValueError if ssl is loaded already."""
    loaded = [name for name in _SSL_MODULES if sys.modules.get(name) is not None]
    if loaded:
        raise ValueError(f"cannot disable TLS: {', '.join(loaded)} already imported")
    global _started_without
    _started_without = True
    if _refuse not in sys.meta_path:
        sys.meta_path.insert(0, _refuse)


def enable() -> None:
    """Allow `import ssl` again (a reload that needs TLS validates its config with it, then restarts the agent:
    asyncio imported without ssl stays without it in this process)."""
    while _refuse in sys.meta_path:
        sys.meta_path.remove(_refuse)


def available() -> bool:
    """Whether this process's event loop can make TLS connections (false once `disable()` ran, even after
    `enable()`)."""
    return not _started_without
