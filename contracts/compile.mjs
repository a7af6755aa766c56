#!/usr/bin/env node
// Compiles contracts/*.sol with the pinned npm solc (standard JSON, optimizer on, pinned EVM
// version) and writes one artifact per contract to contracts/build/<Name>.json: ABI, bytecode,
// deployed bytecode and metadata. Output is deterministic (sorted keys, source names relative to
// the repository), so the artifacts are committed and `--check` can fail when they drift.
//
//   node contracts/compile.mjs           write contracts/build/
//   node contracts/compile.mjs --check   recompile in memory; exit 1 if contracts/build differs
import { createRequire } from 'node:module'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { fileURLToPath } from 'node:url'

const require = createRequire(import.meta.url)
const solc = require('solc')

const CONTRACTS_DIR = path.dirname(fileURLToPath(import.meta.url))
const ROOT = path.dirname(CONTRACTS_DIR)
const BUILD_DIR = path.join(CONTRACTS_DIR, 'build')
const NODE_MODULES = path.join(ROOT, 'node_modules')

// Pinned with the compiler: changing either changes the bytecode, so both are deliberate.
const SETTINGS = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: 'cancun',
  metadata: { bytecodeHash: 'ipfs', appendCBOR: true },
  outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object', 'metadata'] } },
}

function sourceFiles() {
  return fs.readdirSync(CONTRACTS_DIR).filter((f) => f.endsWith('.sol')).sort()
}

// Import callback: "@openzeppelin/..." resolves under node_modules; the source unit name stays
// the import path, never an absolute path, so metadata is the same on every checkout.
function findImports(importPath) {
  for (const base of [ROOT, NODE_MODULES]) {
    const file = path.join(base, importPath)
    if (fs.existsSync(file)) return { contents: fs.readFileSync(file, 'utf8') }
  }
  return { error: `import not found under the repository or node_modules: ${importPath}` }
}

function compile() {
  const sources = {}
  for (const f of sourceFiles()) {
    sources[`contracts/${f}`] = { content: fs.readFileSync(path.join(CONTRACTS_DIR, f), 'utf8') }
  }
  const input = { language: 'Solidity', sources, settings: SETTINGS }
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }))
  const problems = (output.errors ?? []).filter((e) => e.severity === 'error' || e.type === 'Warning')
  for (const e of problems) console.error(e.formattedMessage)
  if (problems.some((e) => e.severity === 'error')) process.exit(2)
  if (problems.length) {
    console.error('solc warnings are treated as errors')
    process.exit(2)
  }

  const artifacts = {}
  for (const [unit, contracts] of Object.entries(output.contracts)) {
    if (!unit.startsWith('contracts/')) continue // only our own contracts, not their imports
    for (const [name, c] of Object.entries(contracts)) {
      artifacts[`${name}.json`] = stableJson({
        contractName: name,
        sourceName: unit,
        compiler: { solc: solc.version(), settings: SETTINGS },
        abi: c.abi,
        bytecode: '0x' + c.evm.bytecode.object,
        deployedBytecode: '0x' + c.evm.deployedBytecode.object,
        metadata: JSON.parse(c.metadata),
      })
    }
  }
  return artifacts
}

function sortKeys(value) {
  if (Array.isArray(value)) return value.map(sortKeys)
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.keys(value).sort().map((k) => [k, sortKeys(value[k])]))
  }
  return value
}

function stableJson(value) {
  return JSON.stringify(sortKeys(value), null, 2) + '\n'
}

function write(artifacts) {
  fs.mkdirSync(BUILD_DIR, { recursive: true })
  for (const stale of fs.readdirSync(BUILD_DIR)) {
    if (!(stale in artifacts)) fs.rmSync(path.join(BUILD_DIR, stale))
  }
  for (const [file, text] of Object.entries(artifacts)) fs.writeFileSync(path.join(BUILD_DIR, file), text)
  console.log(`wrote ${Object.keys(artifacts).length} artifacts to contracts/build/ (solc ${solc.version()})`)
}

function check(artifacts) {
  const present = fs.existsSync(BUILD_DIR) ? fs.readdirSync(BUILD_DIR).sort() : []
  const differences = []
  for (const file of Object.keys(artifacts).sort()) {
    const target = path.join(BUILD_DIR, file)
    if (!fs.existsSync(target)) differences.push(`missing: contracts/build/${file}`)
    else if (fs.readFileSync(target, 'utf8') !== artifacts[file]) differences.push(`differs: contracts/build/${file}`)
  }
  for (const file of present) {
    if (!(file in artifacts)) differences.push(`not produced by the sources: contracts/build/${file}`)
  }
  if (differences.length) {
    for (const d of differences) console.error(d)
    console.error('contracts/build/ is out of date with contracts/*.sol: run `make contracts` and commit it')
    process.exit(1)
  }
  console.log(`contracts/build/ matches a fresh compile (solc ${solc.version()})`)
}

const artifacts = compile()
if (process.argv.includes('--check')) check(artifacts)
else write(artifacts)
