"""Kubernetes: metadata for container logs (what the path says, what the API server says), and what the agent
tells the API server about its node.

    path.py        - namespace / pod / uid / container / restart count from log and volume paths
    api.py         - asyncio list+watch client for the API server (auth, resourceVersion, bookmarks, 410, backoff)
    client.py      - single-object requests (get/create/patch/update) with the same credentials; access settings
    cache.py       - PodCache: pods by uid / container id / name, kept a while after deletion
    stage.py       - KubernetesMetadata stage (registry type "kubernetes"), annotation steering, sidecar unwrapping
    conditions.py  - node conditions for permanent kernel problems, persisted with the boot id
    events.py      - Events about node problems: series aggregation, rate limit, retries, never blocking
    problems.py    - NodeProblems stage (registry type "node_problems"): incidents -> conditions and Events
    lease.py       - leader election with a coordination.k8s.io/v1 Lease (the kube_events input's)
"""
