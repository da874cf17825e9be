"""`aeguard watch`: Prometheus in (reader, alignment), the same scorer, scores out on /metrics."""
