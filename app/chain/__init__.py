"""The chain (issue 5): dev chain and deployment, contract artifacts, the anchoring worker."""
