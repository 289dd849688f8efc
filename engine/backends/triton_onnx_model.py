"""Triton Python-backend model that runs an ONNX file with ONNX Runtime (copied as ``model.py``).

This file is not imported by vistream: :func:`engine.backends.triton_server.write_model_repository`
copies it into a model repository as ``<model>/1/model.py``, for Triton builds that only have the
Python backend (the server inside the ``nvidia-pytriton`` wheel). A real deployment points its
``config.pbtxt`` at the ``onnxruntime`` or ``tensorrt`` backend instead; the client side is the
same.

Dynamic batching hands ``execute`` several requests at once: their inputs are concatenated
along the batch axis and run as one ONNX Runtime call, which is what makes server-side batching
pay. Config ``parameters`` read here: ``onnx_file`` (default ``model.onnx``, in the version
directory), ``intra_op_num_threads`` (default: ONNX Runtime's choice) and ``delay_s`` (sleep before
each execution: simulates a slow model for timeout tests).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]


class TritonPythonModel:
    """Triton's Python-backend entry point (the class name is fixed by Triton)."""

    def initialize(self, args: dict[str, str]) -> None:
        """Create the ONNX Runtime session for this model instance."""
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        path = (
            Path(args["model_repository"]) / args["model_version"] / parameters.get("onnx_file", "model.onnx")
        )
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if parameters.get("intra_op_num_threads"):
            options.intra_op_num_threads = int(parameters["intra_op_num_threads"])
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [spec["name"] for spec in config["input"]]
        self.output_names = [spec["name"] for spec in config["output"]]
        self.batching = int(config.get("max_batch_size", 0)) > 0
        self.delay_s = float(parameters.get("delay_s", 0) or 0)

    def execute(self, requests: list[Any]) -> list[Any]:
        """Run every request; with batching, all of them in one ONNX Runtime call."""
        if self.delay_s:
            time.sleep(self.delay_s)
        feeds = [
            {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_names}
            for request in requests
        ]
        if self.batching and len(feeds) > 1:
            counts = [len(feed[self.input_names[0]]) for feed in feeds]
            joined = {name: np.concatenate([feed[name] for feed in feeds]) for name in self.input_names}
            outputs = self.session.run(self.output_names, joined)
            bounds = np.cumsum(counts)[:-1]
            split = [np.split(output, bounds) for output in outputs]
            results = [[parts[i] for parts in split] for i in range(len(feeds))]
        else:
            results = [self.session.run(self.output_names, feed) for feed in feeds]
        return [
            pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor(name, np.ascontiguousarray(value))
                    for name, value in zip(self.output_names, values, strict=True)
                ]
            )
            for values in results
        ]

    def finalize(self) -> None:
        """Release the session."""
        self.session = None
