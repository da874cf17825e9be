"""The networks, one module per architecture (registered in :mod:`training.registry`)."""
