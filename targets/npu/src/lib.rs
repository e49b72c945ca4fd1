//! NPU delegation: per-segment ONNX export and a tract reference delegate.
