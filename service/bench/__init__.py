"""`make bench`: aeguard's serving throughput against a no-op gRPC server and in-process onnxruntime.

Run it as ``python -m service.bench`` (``--help`` for options). Every figure comes from one run, so
the ratios compare like with like: the same machine, the same load generator, the same model.
"""
