"""What a run measures: run metrics and status lines, Prometheus export, per-frame timelines,
and machine resources."""
