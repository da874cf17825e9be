"""`make bench`: aeguard's serving throughput against a no-op gRPC server and in-process onnxruntime.

Run it from a checkout as ``python -m bench`` (``--help`` for options). Not part of the aeguard
package: neither the wheel nor the image carries it. Every figure comes from one run, so
the ratios compare like with like: the same machine, the same load generator, the same model.
"""
