"""Benchmarks of the Yilian FHIR server (`make bench`, `make bench-quick`, `make bench-import`,
`make bench-auth`); not part of `make test`.

`bench.run` starts real servers on 127.0.0.1, drives them with wrk and HTTP transaction Bundles,
and writes `bench/results/<timestamp>.json` and `docs/performance.md`; `bench.import_cn` and
`bench.auth_overhead` (authorized against open reads) write their own sections of it.
"""
