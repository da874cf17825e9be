"""The gRPC transport: servicer, converters, interceptors, server wiring and the `serve` command."""
