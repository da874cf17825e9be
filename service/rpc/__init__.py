"""The gRPC transport: servicer, converters, instrumented handlers, server wiring and the `serve` command."""
