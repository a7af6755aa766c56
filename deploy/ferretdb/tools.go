//go:build tools

// Package tools pins FerretDB v1.24.0, the MongoDB-protocol server of the test suite (issue 6,
// docs/mongodb-options.md): `make ferretdb` vendors and builds it into .venv/bin/ferretdb.
package tools

import _ "github.com/FerretDB/FerretDB/cmd/ferretdb"
