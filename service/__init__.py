"""aeguard serving side: the artifact contract, scoring, the gRPC server and the batch job (no torch)."""
