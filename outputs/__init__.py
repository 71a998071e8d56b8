"""Outputs: where batches go (stdout, file, Elasticsearch, Loki, SLS). Installed as `logagent.outputs`."""
