"""Reports: the plain-text summary of `aeguard train` and the HTML training report."""
