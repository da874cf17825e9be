"""`aeguard benchmark`: detection quality against peer detectors, and the VAE score study."""
