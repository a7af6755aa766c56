"""FHIRPath (http://hl7.org/fhirpath/N1/) compiled for R4 SearchParameter expressions.

Search indexing evaluates every SearchParameter expression of a resource's type on every write,
so each expression is compiled once into Python closures over the resource as parsed JSON
(plain dicts and lists, never pydantic models). Element names and types come from the
registry's element tables, which is what lets `Observation.effective` find `effectiveDateTime`
and `effectivePeriod`, and `.ofType(Quantity)` pick `valueQuantity`.

The subset is the one the R4 SearchParameter definitions use, implemented with FHIRPath's
semantics rather than as special cases:

- paths, with choice elements (`value[x]`) expanded to their typed JSON keys and
  `contentReference` elements (`Questionnaire.item.item`) followed;
- `.ofType(T)` / `.as(T)` / `is T` / `as T`, where `T` is a FHIR type (subtypes match:
  `Age` is a `Quantity`) or a System type (`DateTime` means FHIR `dateTime`);
- `(…)` grouping followed by a path, unions `|`, indexers `[n]`;
- `where(criteria)` with `=`, `!=`, `and`, `or`, `xor`, `implies`, `not()`, `exists()`,
  `empty()`, `first()`, `last()`, `count()`;
- `resolve()`, which cannot fetch anything here, so it yields a stub resource carrying only the
  type and id read from `Reference.reference` (relative `Patient/x`, absolute
  `…/Patient/x`, optionally with `/_history/n`) or, for references with no parseable
  literal, from `Reference.type`. That is all `where(resolve() is Patient)` needs;
- `%resource` / `%rootResource`, the resource being indexed (MolecularSequence's composite
  components use `%resource.referenceSeq.chromosome`).

Every result item is `(value, node)`; `node.type` is the FHIR type of the value
(`"CodeableConcept"`, `"dateTime"`, `"boolean"`, `"Patient"`), which index conversion
dispatches on. Boolean-valued expressions (`Patient.deceased.exists() and
Patient.deceased != false`) yield `(True | False, boolean node)` following FHIRPath's
three-valued logic.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from app.definitions.registry import Registry

__all__ = [
    "Expression",
    "FHIRPathCompiler",
    "FHIRPathError",
    "Item",
    "Node",
]


class FHIRPathError(ValueError):
    """An expression outside the supported subset, or one that names unknown elements."""

    def __init__(self, expression: str, position: int, reason: str) -> None:
        super().__init__(f"{reason} at position {position} in FHIRPath {expression!r}")
        self.expression = expression
        self.position = position
        self.reason = reason


class Node:
    """Static type of a value: its FHIR type and where its child elements are described.

    `table`/`path` locate the children in the registry's element tables: a BackboneElement
    such as Observation.component is (`"Observation"`, `"component"`), a data type such as
    CodeableConcept is (`"CodeableConcept"`, `""`). Nodes are interned per compiler so
    identity comparison and identity hashing are enough on the hot path.
    """

    __slots__ = ("abstract", "path", "table", "type")

    def __init__(self, type_: str, table: str | None, path: str, abstract: bool) -> None:
        self.type = type_
        self.table = table
        self.path = path
        self.abstract = abstract

    def __repr__(self) -> str:
        where = f"{self.table}.{self.path}" if self.path else self.table
        return f"Node({self.type} @ {where})"


Item = tuple[Any, Node]
Env = dict[str, Any]
Fn = Callable[[list[Item], Env], list[Item]]

_SYSTEM_TYPES = {
    "String": "string",
    "Boolean": "boolean",
    "Integer": "integer",
    "Decimal": "decimal",
    "Date": "date",
    "DateTime": "dateTime",
    "Time": "time",
}

# A literal reference's type and id (http://hl7.org/fhir/R4/references.html#literal):
# `Patient/p-001`, `https://host/fhir/Patient/p-001/_history/2`.
_REFERENCE_RE = re.compile(
    r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$"
)


# A patient's or an encounter's reference recurs in every resource of a batch.
@lru_cache(maxsize=4096)
def parse_reference(reference: str) -> tuple[str, str] | None:
    """Type and id of a literal reference, relative or absolute; None for `#x`, `urn:`."""
    if not reference or reference[0] == "#" or reference.startswith("urn:"):
        return None
    m = _REFERENCE_RE.search(reference)
    return (m.group(1), m.group(2)) if m else None


# ---------------------------------------------------------------------------------------------
# Parsing


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # id, str, num, op, var, eof
    text: str
    pos: int


_TOKEN_RE = re.compile(
    r"""\s*(?:
      (?P<str>'(?:[^'\\]|\\.)*')
    | (?P<num>\d+(?:\.\d+)?)
    | (?P<var>%[A-Za-z_][A-Za-z0-9_]*)
    | (?P<id>[A-Za-z_][A-Za-z0-9_]*|`[^`]+`)
    | (?P<op>!=|<=|>=|[().\[\]|=,<>])
    )""",
    re.VERBOSE,
)


def _tokenize(src: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    end = len(src.rstrip())
    while pos < end:
        m = _TOKEN_RE.match(src, pos)
        if m is None or m.end() == pos:
            raise FHIRPathError(src, pos, f"unexpected character {src[pos:pos + 1]!r}")
        kind = m.lastgroup or "op"
        text = m.group(kind)
        if kind == "id" and text.startswith("`"):
            text = text[1:-1]
        toks.append(_Tok(kind, text, m.start(kind)))
        pos = m.end()
    toks.append(_Tok("eof", "", end))
    return toks


@dataclass(frozen=True, slots=True)
class _Ident:  # `name` at the start of a term: a child of the focus or a type filter
    name: str
    pos: int


@dataclass(frozen=True, slots=True)
class _Member:  # target.name
    target: Any
    name: str
    pos: int


@dataclass(frozen=True, slots=True)
class _Call:  # target.fn(args), or fn(args) on the focus when target is None
    target: Any
    name: str
    args: tuple[Any, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class _Index:
    target: Any
    index: Any
    pos: int


@dataclass(frozen=True, slots=True)
class _Literal:
    value: Any
    type: str
    pos: int


@dataclass(frozen=True, slots=True)
class _Var:
    name: str
    pos: int


@dataclass(frozen=True, slots=True)
class _Binary:
    op: str
    left: Any
    right: Any
    pos: int


@dataclass(frozen=True, slots=True)
class _TypeOp:  # `x is T`, `x as T`
    op: str
    left: Any
    type_name: str
    pos: int


class _Parser:
    """Recursive descent over FHIRPath's precedence levels that the subset needs."""

    def __init__(self, src: str) -> None:
        self.src = src
        self.toks = _tokenize(src)
        self.i = 0

    def parse(self) -> Any:
        node = self._implies()
        tok = self.toks[self.i]
        if tok.kind != "eof":
            raise FHIRPathError(self.src, tok.pos, f"unexpected {tok.text!r}")
        return node

    def _peek(self) -> _Tok:
        return self.toks[self.i]

    def _next(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def _expect(self, text: str) -> _Tok:
        tok = self._next()
        if tok.text != text or tok.kind not in ("op", "id"):
            raise FHIRPathError(self.src, tok.pos, f"expected {text!r}, found {tok.text!r}")
        return tok

    def _is_keyword(self, *words: str) -> bool:
        tok = self._peek()
        return tok.kind == "id" and tok.text in words

    def _implies(self) -> Any:
        left = self._or()
        while self._is_keyword("implies"):
            tok = self._next()
            left = _Binary("implies", left, self._or(), tok.pos)
        return left

    def _or(self) -> Any:
        left = self._and()
        while self._is_keyword("or", "xor"):
            tok = self._next()
            left = _Binary(tok.text, left, self._and(), tok.pos)
        return left

    def _and(self) -> Any:
        left = self._equality()
        while self._is_keyword("and"):
            tok = self._next()
            left = _Binary("and", left, self._equality(), tok.pos)
        return left

    def _equality(self) -> Any:
        left = self._union()
        while self._peek().kind == "op" and self._peek().text in ("=", "!="):
            tok = self._next()
            left = _Binary(tok.text, left, self._union(), tok.pos)
        return left

    def _union(self) -> Any:
        left = self._type_op()
        while self._peek().kind == "op" and self._peek().text == "|":
            tok = self._next()
            left = _Binary("|", left, self._type_op(), tok.pos)
        return left

    def _type_op(self) -> Any:
        left = self._postfix()
        while self._is_keyword("is", "as"):
            tok = self._next()
            left = _TypeOp(tok.text, left, self._type_name(), tok.pos)
        return left

    def _type_name(self) -> str:
        tok = self._next()
        if tok.kind != "id":
            raise FHIRPathError(self.src, tok.pos, f"expected a type name, found {tok.text!r}")
        name = tok.text
        if name in ("FHIR", "System") and self._peek().text == ".":
            self._next()
            qualified = self._next()
            name = qualified.text if name == "FHIR" else _SYSTEM_TYPES.get(qualified.text, "")
            if not name:
                raise FHIRPathError(self.src, qualified.pos, "unknown System type")
        return name

    def _postfix(self) -> Any:
        node = self._term()
        while True:
            tok = self._peek()
            if tok.kind == "op" and tok.text == ".":
                self._next()
                name_tok = self._next()
                if name_tok.kind != "id":
                    raise FHIRPathError(self.src, name_tok.pos, "expected a name after '.'")
                if self._peek().text == "(":
                    node = _Call(node, name_tok.text, self._args(name_tok.text), name_tok.pos)
                else:
                    node = _Member(node, name_tok.text, name_tok.pos)
            elif tok.kind == "op" and tok.text == "[":
                self._next()
                index = self._implies()
                self._expect("]")
                node = _Index(node, index, tok.pos)
            else:
                return node

    def _args(self, fn: str) -> tuple[Any, ...]:
        self._expect("(")
        if self._peek().text == ")":
            self._next()
            return ()
        args = []
        while True:
            if fn in ("ofType", "as", "is"):
                pos = self._peek().pos
                args.append(_Literal(self._type_name(), "type", pos))
            else:
                args.append(self._implies())
            tok = self._next()
            if tok.text == ")":
                return tuple(args)
            if tok.text != ",":
                raise FHIRPathError(self.src, tok.pos, f"expected ',' or ')', found {tok.text!r}")

    def _term(self) -> Any:
        tok = self._next()
        if tok.kind == "op" and tok.text == "(":
            inner = self._implies()
            self._expect(")")
            return inner
        if tok.kind == "str":
            text = re.sub(r"\\(.)", r"\1", tok.text[1:-1])
            return _Literal(text, "string", tok.pos)
        if tok.kind == "num":
            if "." in tok.text:
                return _Literal(float(tok.text), "decimal", tok.pos)
            return _Literal(int(tok.text), "integer", tok.pos)
        if tok.kind == "var":
            return _Var(tok.text[1:], tok.pos)
        if tok.kind == "id":
            if tok.text in ("true", "false"):
                return _Literal(tok.text == "true", "boolean", tok.pos)
            if self._peek().text == "(":
                return _Call(None, tok.text, self._args(tok.text), tok.pos)
            return _Ident(tok.text, tok.pos)
        raise FHIRPathError(self.src, tok.pos, f"unexpected {tok.text or 'end of expression'!r}")


# ---------------------------------------------------------------------------------------------
# Compilation


@dataclass(frozen=True, slots=True)
class _Compiled:
    fn: Fn
    nodes: tuple[Node, ...]
    # Set when `fn` is a child step: (the step's input, its table), so that a following
    # `.ofType(T)` can drop the choice keys of other types instead of filtering afterwards.
    step: tuple[_Compiled, dict[Node, tuple[tuple[str, Node], ...]]] | None = None
    # The result is (a filtered part of) the focus itself.
    focus: bool = False
    # The result is empty unless the focus object has one of these JSON keys; None: unknown.
    keys: frozenset[str] | None = None


def _identity(items: list[Item], env: Env) -> list[Item]:
    return items


class Expression:
    """A compiled FHIRPath expression. Call it on a resource, or `evaluate` it on a focus."""

    __slots__ = ("_fn", "_root", "output_nodes", "root_keys", "source")

    def __init__(
        self,
        source: str,
        fn: Fn,
        root: Node,
        output_nodes: tuple[Node, ...],
        root_keys: frozenset[str] | None,
    ) -> None:
        self.source = source
        self._fn = fn
        self._root = root
        self.output_nodes = output_nodes
        # The result is empty when the resource has none of these top-level keys (None: the
        # expression may yield something regardless, e.g. `deceased.exists()`), which lets
        # callers skip the parameters a resource does not populate without evaluating them.
        self.root_keys = root_keys

    def __call__(self, resource: dict[str, Any]) -> list[Item]:
        """Evaluate with the resource as focus (expressions rooted at the resource type)."""
        return self._fn([(resource, self._root)], resource)

    def evaluate(self, focus: list[Item], resource: dict[str, Any]) -> list[Item]:
        """Evaluate on items of another expression (composite components)."""
        return self._fn(focus, resource)

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


class FHIRPathCompiler:
    """Compiles expressions against one Registry's element tables; build one and reuse it."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._nodes: dict[tuple[str, str | None, str], Node] = {}
        self._parents: dict[str, frozenset[str]] = {}
        self._subtypes: dict[str, frozenset[str]] = {}
        self._resource_types = frozenset(registry.resource_types)
        self.boolean = self._node("boolean", "boolean", "")
        self._literal_nodes = {
            t: self._node(t, t, "") for t in ("string", "integer", "decimal", "boolean")
        }
        self._resource_nodes = {t: self.resource_node(t) for t in registry.resource_types}

    # -- public -----------------------------------------------------------------------------

    def compile(self, expression: str, resource_type: str) -> Expression:
        """Compile an expression evaluated on a resource of `resource_type` (`Observation.code`)."""
        root = self.resource_node(resource_type)
        return self._compile(expression, (root,), root)

    def compile_relative(
        self, expression: str, context: Iterable[Node], resource_type: str
    ) -> Expression:
        """Compile an expression evaluated on items of the given static types (`code` on
        Observation.component); `%resource` is the enclosing resource of `resource_type`."""
        return self._compile(expression, tuple(context), self.resource_node(resource_type))

    def resource_node(self, resource_type: str) -> Node:
        abstract = resource_type in ("Resource", "DomainResource")
        return self._node(resource_type, resource_type, "", abstract)

    def is_subtype(self, type_name: str, of: str) -> bool:
        """`Age` is a `Quantity`, `code` a `string`, `Patient` a `Resource` (FHIR R4 bases)."""
        return of in self._ancestors(type_name)

    # -- nodes and element tables -----------------------------------------------------------

    def _node(self, type_: str, table: str | None, path: str, abstract: bool = False) -> Node:
        key = (type_, table, path)
        node = self._nodes.get(key)
        if node is None:
            node = self._nodes[key] = Node(type_, table, path, abstract)
        return node

    def _ancestors(self, type_name: str) -> frozenset[str]:
        found = self._parents.get(type_name)
        if found is None:
            chain, t = [type_name], type_name
            while True:
                base = self.registry.types.get(t, {}).get("base")
                if not base or base in chain:
                    break
                chain.append(base)
                t = base
            found = self._parents[type_name] = frozenset(chain)
        return found

    def _subtypes_of(self, type_name: str) -> frozenset[str]:
        found = self._subtypes.get(type_name)
        if found is None:
            found = frozenset(
                t for t in self.registry.types if self.is_subtype(t, type_name)
            ) | {type_name}
            self._subtypes[type_name] = found
        return found

    def _has_children(self, table: str, path: str) -> bool:
        prefix = path + "."
        return any(p.startswith(prefix) for p in self.registry.elements(table))

    def _type_node(self, type_name: str, table: str, path: str) -> Node:
        if type_name in ("BackboneElement", "Element") and self._has_children(table, path):
            return self._node(type_name, table, path)
        if type_name in self._resource_types or type_name in ("Resource", "DomainResource"):
            return self.resource_node(type_name)
        if type_name in self.registry.types:
            return self._node(type_name, type_name, "")
        return self._node(type_name, None, "")

    def _children(self, node: Node, name: str) -> tuple[tuple[str, Node], ...]:
        """JSON keys and static types of child `name` of a node (several for a choice)."""
        if node.table is None:
            return ()
        path = f"{node.path}.{name}" if node.path else name
        el = self.registry.element(node.table, path)
        choice = False
        if el is None:
            el = self.registry.element(node.table, path + "[x]")
            choice = True
        if el is None:
            return ()
        types, child_path = el.types, path
        if el.content_reference:
            target = self.registry.element(node.table, el.content_reference)
            if target is None:
                return ()
            types, child_path = target.types, el.content_reference
        out = []
        for t in types:
            key = name + t[0].upper() + t[1:] if choice else name
            out.append((key, self._type_node(t, node.table, child_path)))
        return tuple(out)

    # -- compiler ---------------------------------------------------------------------------

    def _compile(self, src: str, context: tuple[Node, ...], root: Node) -> Expression:
        ast = _Parser(src).parse()
        compiled = _Compilation(self, src, root).compile(ast, context)
        return Expression(src, compiled.fn, root, compiled.nodes, compiled.keys)


class _Compilation:
    def __init__(self, compiler: FHIRPathCompiler, src: str, root: Node) -> None:
        self.c = compiler
        self.src = src
        self.root = root

    def error(self, pos: int, reason: str) -> FHIRPathError:
        return FHIRPathError(self.src, pos, reason)

    def compile(self, ast: Any, ctx: tuple[Node, ...]) -> _Compiled:
        if isinstance(ast, _Ident):
            return self._ident(ast, ctx)
        if isinstance(ast, _Member):
            target = self.compile(ast.target, ctx)
            return self._step(target, ast.name, ast.pos)
        if isinstance(ast, _Call):
            source = (
                self.compile(ast.target, ctx) if ast.target is not None
                else _Compiled(_identity, ctx, focus=True)
            )
            return self._call(ast, source)
        if isinstance(ast, _Index):
            return self._index(ast, ctx)
        if isinstance(ast, _Literal):
            item = (ast.value, self.c._literal_nodes[ast.type])
            return _Compiled(lambda items, env: [item], (item[1],))
        if isinstance(ast, _Var):
            return self._var(ast)
        if isinstance(ast, _Binary):
            return self._binary(ast, ctx)
        if isinstance(ast, _TypeOp):
            left = self.compile(ast.left, ctx)
            if ast.op == "as":
                return self._of_type(left, ast.type_name, ast.pos)
            return self._is(left, ast.type_name, ast.pos)
        raise self.error(0, f"unsupported construct {type(ast).__name__}")

    # -- paths ------------------------------------------------------------------------------

    def _ident(self, ast: _Ident, ctx: tuple[Node, ...]) -> _Compiled:
        name = ast.name
        if name[0].isupper():
            # FHIR element names start lower-case; an upper-case first name is a type filter
            # (`Observation.code` evaluated on an Observation).
            accepted = self._type_set(name, ast.pos)
            kept = tuple(n for n in ctx if n.type in accepted or n.abstract)
            if not kept:
                raise self.error(ast.pos, f"{name} is not the type of the focus {ctx}")
            if all(n.type in accepted for n in ctx):
                return _Compiled(_identity, kept, focus=True)
            return _Compiled(_filter_types(accepted), kept, focus=True)
        return self._step(_Compiled(_identity, ctx, focus=True), name, ast.pos)

    def _step(self, target: _Compiled, name: str, pos: int) -> _Compiled:
        table: dict[Node, tuple[tuple[str, Node], ...]] = {}
        for node in target.nodes:
            children = self.c._children(node, name)
            if children:
                table[node] = children
        if not table:
            types = ", ".join(sorted({repr(n) for n in target.nodes}))
            raise self.error(pos, f"no element {name!r} on {types}")
        return self._make_step(target, table)

    def _make_step(
        self, target: _Compiled, table: dict[Node, tuple[tuple[str, Node], ...]]
    ) -> _Compiled:
        nodes = tuple(dict.fromkeys(child for kids in table.values() for _, child in kids))
        step = _child_step(table, self.c._resource_nodes)
        fn = step if target.fn is _identity else _chain(target.fn, step)
        if target.focus:
            keys: frozenset[str] | None = frozenset(
                key for kids in table.values() for key, _ in kids
            )
        else:
            keys = target.keys
        return _Compiled(fn, nodes, (target, table), keys=keys)

    def _var(self, ast: _Var) -> _Compiled:
        if ast.name not in ("resource", "rootResource"):
            raise self.error(ast.pos, f"unsupported variable %{ast.name}")
        root = self.root

        def resource(items: list[Item], env: Env) -> list[Item]:
            return [(env, root)]

        return _Compiled(resource, (root,))

    def _index(self, ast: _Index, ctx: tuple[Node, ...]) -> _Compiled:
        if not isinstance(ast.index, _Literal) or ast.index.type != "integer":
            raise self.error(ast.pos, "only integer literal indexes are supported")
        target = self.compile(ast.target, ctx)
        i, inner = ast.index.value, target.fn

        def index(items: list[Item], env: Env) -> list[Item]:
            return inner(items, env)[i : i + 1]

        return _Compiled(index, target.nodes, keys=target.keys)

    # -- types ------------------------------------------------------------------------------

    def _type_set(self, type_name: str, pos: int) -> frozenset[str]:
        if type_name not in self.c.registry.types:
            mapped = _SYSTEM_TYPES.get(type_name)
            if mapped is None:
                raise self.error(pos, f"unknown type {type_name!r}")
            type_name = mapped
        return self.c._subtypes_of(type_name)

    def _of_type(self, target: _Compiled, type_name: str, pos: int) -> _Compiled:
        accepted = self._type_set(type_name, pos)
        if target.step is not None:
            # Drop the JSON keys of the other choice types instead of reading them all.
            source, table = target.step
            pruned = {
                src: kept
                for src, kids in table.items()
                if (kept := tuple((k, n) for k, n in kids if n.type in accepted or n.abstract))
            }
            if not pruned:
                raise self.error(pos, f"no {type_name} among {target.nodes}")
            target = self._make_step(source, pruned)
            if not any(n.abstract for n in target.nodes):
                return target
        nodes = tuple(n for n in target.nodes if n.type in accepted)
        if any(n.abstract for n in target.nodes) and type_name in self.c._resource_nodes:
            nodes += (self.c._resource_nodes[type_name],)
        if not nodes:
            raise self.error(pos, f"no {type_name} among {target.nodes}")
        return _Compiled(
            _chain(target.fn, _filter_types(accepted)), nodes, focus=target.focus, keys=target.keys
        )

    def _is(self, left: _Compiled, type_name: str, pos: int) -> _Compiled:
        accepted = self._type_set(type_name, pos)
        inner, boolean = left.fn, self.c.boolean

        def is_type(items: list[Item], env: Env) -> list[Item]:
            got = inner(items, env)
            if len(got) != 1:
                return []
            return [(got[0][1].type in accepted, boolean)]

        return _Compiled(is_type, (boolean,))

    # -- functions --------------------------------------------------------------------------

    def _call(self, ast: _Call, source: _Compiled) -> _Compiled:
        name, args = ast.name, ast.args
        arity = {"where": 1, "ofType": 1, "as": 1, "is": 1}.get(name, 0)
        if len(args) != arity:
            raise self.error(ast.pos, f"{name}() takes {arity} argument(s), got {len(args)}")
        if name in ("ofType", "as"):
            return self._of_type(source, args[0].value, ast.pos)
        if name == "is":
            return self._is(source, args[0].value, ast.pos)
        if name == "where":
            return self._where(source, args[0])
        if name == "resolve":
            return self._resolve(source, ast.pos)
        inner = source.fn
        if name == "count":
            integer = self.c._literal_nodes["integer"]

            def count(items: list[Item], env: Env) -> list[Item]:
                return [(len(inner(items, env)), integer)]

            return _Compiled(count, (integer,))
        simple = _COLLECTION_FUNCTIONS.get(name)
        if simple is None:
            raise self.error(ast.pos, f"unsupported function {name}()")
        fn, boolean_result = simple
        boolean = self.c.boolean
        nodes = (boolean,) if boolean_result else source.nodes

        def call(items: list[Item], env: Env) -> list[Item]:
            return fn(inner(items, env), boolean)

        if boolean_result:
            return _Compiled(call, nodes)
        return _Compiled(call, nodes, keys=source.keys)

    def _where(self, source: _Compiled, criteria_ast: Any) -> _Compiled:
        inner = source.fn
        keep = self._direct_criteria(criteria_ast, source.nodes)
        if keep is not None:

            def where_direct(items: list[Item], env: Env) -> list[Item]:
                return [item for item in inner(items, env) if keep(item[0], item[1])]

            return _Compiled(where_direct, source.nodes, focus=source.focus, keys=source.keys)
        criteria = self.compile(criteria_ast, source.nodes).fn

        def where(items: list[Item], env: Env) -> list[Item]:
            out = []
            for item in inner(items, env):
                got = criteria([item], env)
                if len(got) == 1 and got[0][0] is True:
                    out.append(item)
            return out

        return _Compiled(where, source.nodes, focus=source.focus, keys=source.keys)

    def _direct_criteria(
        self, ast: Any, nodes: tuple[Node, ...]
    ) -> Callable[[Any, Node], bool] | None:
        """Plain tests for the two criteria R4 uses on most resources, `resolve() is Patient`
        and `system = 'phone'`, with the same result as evaluating them item by item."""
        if (
            isinstance(ast, _TypeOp) and ast.op == "is" and isinstance(ast.left, _Call)
            and ast.left.target is None and ast.left.name == "resolve" and not ast.left.args
        ):
            accepted = self._type_set(ast.type_name, ast.pos)

            def resolves_to(value: Any, node: Node) -> bool:
                if node.type != "Reference" or value.__class__ is not dict:
                    return False
                target = _resolved(value)
                return target is not None and target[0] in accepted

            return resolves_to
        if (
            isinstance(ast, _Binary) and ast.op == "=" and isinstance(ast.left, _Ident)
            and not ast.left.name[0].isupper() and isinstance(ast.right, _Literal)
            and ast.right.type == "string"
        ):
            keys = {}
            for node in nodes:
                children = self.c._children(node, ast.left.name)
                if len(children) != 1:
                    return None
                keys[node] = children[0][0]
            literal = ast.right.value

            def equals(value: Any, node: Node) -> bool:
                key = keys.get(node)
                if key is None or value.__class__ is not dict:
                    return False
                v = value.get(key)
                if v.__class__ is list and len(v) == 1:
                    v = v[0]
                return v.__class__ is str and v == literal

            return equals
        return None

    def _resolve(self, source: _Compiled, pos: int) -> _Compiled:
        if not any(n.type == "Reference" for n in source.nodes):
            raise self.error(pos, f"resolve() needs References, got {source.nodes}")
        inner = source.fn
        resource_nodes = self.c._resource_nodes

        def resolve(items: list[Item], env: Env) -> list[Item]:
            out: list[Item] = []
            for value, node in inner(items, env):
                if node.type != "Reference" or value.__class__ is not dict:
                    continue
                target = _resolved(value)
                if target is None:
                    continue
                rnode = resource_nodes.get(target[0])
                if rnode is not None:
                    out.append(({"resourceType": target[0], "id": target[1]}, rnode))
            return out

        return _Compiled(resolve, (self.c.resource_node("Resource"),), keys=source.keys)

    # -- operators --------------------------------------------------------------------------

    def _binary(self, ast: _Binary, ctx: tuple[Node, ...]) -> _Compiled:
        left = self.compile(ast.left, ctx)
        right = self.compile(ast.right, ctx)
        lf, rf = left.fn, right.fn
        if ast.op == "|":
            nodes = tuple(dict.fromkeys(left.nodes + right.nodes))

            def union(items: list[Item], env: Env) -> list[Item]:
                a, b = lf(items, env), rf(items, env)
                return _union(a, b) if a and b else a or b

            keys = None if left.keys is None or right.keys is None else left.keys | right.keys
            return _Compiled(union, nodes, keys=keys)
        boolean = self.c.boolean
        if ast.op in ("=", "!="):
            negate = ast.op == "!="

            def equals(items: list[Item], env: Env) -> list[Item]:
                result = _equal(lf(items, env), rf(items, env))
                if result is None:
                    return []
                return [(result is not negate, boolean)]

            return _Compiled(equals, (boolean,))
        logic = _LOGIC[ast.op]

        def logical(items: list[Item], env: Env) -> list[Item]:
            result = logic(_truth(lf(items, env)), _truth(rf(items, env)))
            return [] if result is None else [(result, boolean)]

        return _Compiled(logical, (boolean,))


# ---------------------------------------------------------------------------------------------
# Runtime pieces (closures built by the compiler)


def _resolved(reference: dict[str, Any]) -> tuple[str, str | None] | None:
    """(type, id) a Reference points at: from its literal reference, else (for a logical or
    `urn:` reference) from Reference.type; None for contained and unreadable references."""
    literal = reference.get("reference")
    if literal is not None and not isinstance(literal, str):
        return None
    parsed = parse_reference(literal) if literal else None
    if parsed is not None:
        return parsed
    if literal and not literal.startswith("urn:"):
        return None
    rtype = reference.get("type")
    return (rtype, None) if isinstance(rtype, str) else None


def _chain(first: Fn, second: Fn) -> Fn:
    def chained(items: list[Item], env: Env) -> list[Item]:
        return second(first(items, env), env)

    return chained


def _filter_types(accepted: frozenset[str]) -> Fn:
    def filter_types(items: list[Item], env: Env) -> list[Item]:
        return [item for item in items if item[1].type in accepted]

    return filter_types


def _child_step(
    table: dict[Node, tuple[tuple[str, Node], ...]], resource_nodes: dict[str, Node]
) -> Fn:
    """Select child elements; JSON arrays are flattened, as FHIRPath collections are."""
    concrete = not any(child.abstract for kids in table.values() for _, child in kids)
    if concrete and len(table) == 1:
        ((src, kids),) = table.items()
        if len(kids) == 1:
            ((key, child),) = kids

            def one_child(items: list[Item], env: Env) -> list[Item]:
                out: list[Item] = []
                for value, node in items:
                    if node is src and value.__class__ is dict:
                        v = value.get(key)
                        if v is None:
                            continue
                        if v.__class__ is list:
                            out.extend([(x, child) for x in v if x is not None])
                        else:
                            out.append((v, child))
                return out

            return one_child

    def children(items: list[Item], env: Env) -> list[Item]:
        out: list[Item] = []
        for value, node in items:
            kids = table.get(node)
            if kids is None or value.__class__ is not dict:
                continue
            for key, child in kids:
                v = value.get(key)
                if v is None:
                    continue
                for x in v if v.__class__ is list else (v,):
                    if x is None:
                        continue
                    if child.abstract and isinstance(x, dict):
                        # Bundle.entry.resource and contained: the JSON says which resource.
                        out.append((x, resource_nodes.get(str(x.get("resourceType")), child)))
                    else:
                        out.append((x, child))
        return out

    return children


def _union(a: list[Item], b: list[Item]) -> list[Item]:
    seen: set[Any] = set()
    out = []
    for item in a + b:
        value = item[0]
        key = id(value) if isinstance(value, dict | list) else (value.__class__, value)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def _same_kind(a: Any, b: Any) -> bool:
    # bool is an int in Python but never equal to a number in FHIRPath.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return True
    return a.__class__ is b.__class__


def _equal(a: list[Item], b: list[Item]) -> bool | None:
    """FHIRPath `=`: empty if either side is empty, else item-wise equality."""
    if not a or not b:
        return None
    if len(a) != len(b):
        return False
    return all(_same_kind(x[0], y[0]) and x[0] == y[0] for x, y in zip(a, b, strict=True))


def _truth(items: list[Item]) -> bool | None:
    """Singleton evaluation of collections (FHIRPath §4.5): empty is unknown."""
    if not items:
        return None
    if len(items) == 1 and isinstance(items[0][0], bool):
        return items[0][0]
    return True


def _and(a: bool | None, b: bool | None) -> bool | None:
    if a is False or b is False:
        return False
    return None if a is None or b is None else True


def _or(a: bool | None, b: bool | None) -> bool | None:
    if a is True or b is True:
        return True
    return None if a is None or b is None else False


def _xor(a: bool | None, b: bool | None) -> bool | None:
    return None if a is None or b is None else a != b


def _implies(a: bool | None, b: bool | None) -> bool | None:
    if a is False or b is True:
        return True
    return None if a is None or b is None else False


_LOGIC: dict[str, Callable[[bool | None, bool | None], bool | None]] = {
    "and": _and,
    "or": _or,
    "xor": _xor,
    "implies": _implies,
}


def _exists(items: list[Item], boolean: Node) -> list[Item]:
    return [(bool(items), boolean)]


def _empty(items: list[Item], boolean: Node) -> list[Item]:
    return [(not items, boolean)]


def _not(items: list[Item], boolean: Node) -> list[Item]:
    truth = _truth(items)
    return [] if truth is None else [(not truth, boolean)]


def _first(items: list[Item], boolean: Node) -> list[Item]:
    return items[:1]


def _last(items: list[Item], boolean: Node) -> list[Item]:
    return items[-1:]


_COLLECTION_FUNCTIONS: dict[str, tuple[Callable[[list[Item], Node], list[Item]], bool]] = {
    "exists": (_exists, True),
    "empty": (_empty, True),
    "not": (_not, True),
    "first": (_first, False),
    "last": (_last, False),
}
