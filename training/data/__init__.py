"""Data: reading tables, the telemetry simulator and the seeded splits."""
