"""`vistream export`: model export (ONNX, TensorRT) with parity checks, and classifier checks."""
