"""The chain (issue 5): dev chain, contract artifacts, and later the anchoring worker."""
