"""Export: the scoring graph to one ONNX file, and architecture extras (a VAE generator)."""
