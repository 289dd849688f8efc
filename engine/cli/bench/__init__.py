"""`vistream bench`: pipeline runs with per-frame timelines, model throughput, and reports."""
