"""Kubernetes metadata for container logs: what the path says (no API needed), what the API server says (one
list+watch of this node's pods, cached), and the pipeline stage that attaches both to batches.

    path.py   - namespace / pod / uid / container / restart count from log and volume paths
    api.py    - asyncio list+watch client for the API server (auth, resourceVersion, bookmarks, 410, backoff)
    cache.py  - PodCache: pods by uid / container id / name, kept a while after deletion
    stage.py  - KubernetesMetadata stage (registry type "kubernetes"), annotation steering, sidecar unwrapping
"""
