"""`vistream serve`: a camera service with a REST API, live view and a calibration editor.

- :mod:`engine.serve.streams`: a stream's validated configuration, the pipelines by name.
- :mod:`engine.serve.registry`: the streams, stored in SQLite under the data directory.
- :mod:`engine.serve.worker`: one stream's pipeline in the current process (a plain class).
- :mod:`engine.serve.process`: that worker in a child process of its own, over a pipe.
- :mod:`engine.serve.supervisor`: starts, watches and restarts a stream's worker process.
- :mod:`engine.serve.service`: the streams, their workers and their calibrations.
- :mod:`engine.serve.app`: the HTTP API, live video, metrics and the web UI (``ui/``).
- :mod:`engine.serve.security`: token, request size cap, origin check.
"""
