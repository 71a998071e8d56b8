"""Where and how to reach the API server, as every Kubernetes component configures it (`kubeconfig`, `context`,
`api_server`, `token_file`, `ca_file`): one parser of those keys and one choice of credentials for the kubernetes
stage, the node_problems stage and the kube_events input. Light to import: the API client (and its HTTP stack) is
imported only when `credentials()` is asked for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from logagent.config import Section

if TYPE_CHECKING:
    from logagent.kubernetes.api import ApiCredentials


@dataclass(frozen=True)
class ApiAccess:
    """Where and how to reach the API server, as components configure it."""

    kubeconfig: str | None = None
    context: str | None = None
    api_server: str | None = None
    token_file: str | None = None
    ca_file: str | None = None

    def credentials(self) -> ApiCredentials | None:
        """None when not in a cluster and nothing is configured; ValueError/OSError for unusable settings."""
        from logagent.kubernetes.api import in_cluster_credentials, kubeconfig_credentials

        if self.kubeconfig:
            return kubeconfig_credentials(self.kubeconfig, self.context, self.api_server)
        return in_cluster_credentials(self.api_server, self.token_file, self.ca_file)


def parse_access(section: Section) -> ApiAccess:
    """The API access keys of a config section (`kubeconfig`, `context`, `api_server`, `token_file`, `ca_file`)."""
    access = ApiAccess(section.str("kubeconfig", None), section.str("context", None), section.str("api_server", None),
                       section.str("token_file", None), section.str("ca_file", None))
    if access.api_server is not None and not access.api_server.startswith(("http://", "https://")):
        raise section.error(f"expected an http:// or https:// URL, got {access.api_server!r}", "api_server")
    return access
