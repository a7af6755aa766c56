"""A sample hospital export with the awkward cases real exports contain (README.md, build.py)."""
