"""The training command lines (`aeguard train`, `aeguard evaluate`) and their progress bar."""
