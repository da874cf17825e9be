"""aeguard training side: fit an undercomplete autoencoder, calibrate, evaluate and export one ONNX model."""
