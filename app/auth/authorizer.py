"""SMART enforcement on the FHIR API: the authenticator and authorizer hooks (design §8).

`SmartAuthenticator` turns `Authorization: Bearer …` into a `Principal` through `BearerVerifier`
(issuer and audience derived from the FHIR base URL as the token endpoint derives them,
revocation asked of the auth store on every request). No header: the anonymous principal, which
the authorizer answers with 401. A bad token: 401 with the verifier's exact `WWW-Authenticate`.

`SmartAuthorizer` applies the 401/403/404 policy (docs/architecture.md, "Authorization"):

- `check` decides from the token alone: anonymous → 401; the scopes do not cover the interaction
  on the type → 403 `insufficient_scope` naming the scope that would;
- `visible` / `writable` judge one resource (reads 404 like a missing resource; writes of content
  outside the grant 403);
- `restrict` pushes the access rules into a search (compartment and granular clauses ANDed into
  it, its chains, `_has` and includes), and binds its page tokens to the caller.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import time
from collections.abc import Sequence
from typing import Any

import orjson
from starlette.requests import HTTPConnection

from app.auth.bearer import DEFAULT_REALM, BearerError, BearerVerifier
from app.auth.compartment import PatientCompartment
from app.auth.keys import Keyring
from app.auth.policy import AccessPolicy, Matcher, Rule
from app.auth.routes_token import AuthUrls
from app.auth.store import AuthStore
from app.config import Settings
from app.definitions.registry import Registry, load_registry
from app.fhir.outcome import FhirError, Issue
from app.pipeline.hooks import Hooks, Interaction, Principal
from app.search.extract import Indexer
from app.search.query import AnyOf, Chain, Clause, Has, SearchQuery, TypeIs
from app.storage.base import StoredVersion

CHALLENGE = f'Bearer realm="{DEFAULT_REALM}"'
POLICY_CACHE = 10_000
ADDRESSED_CACHE = 50_000
FAST_CACHE_SIZE = 50_000
FAST_CACHE_SECONDS = 60.0  # as the verifier's own cache (bearer.CACHE_SECONDS)
MEMBERSHIP_CACHE = 100_000  # compartment membership of recently judged versions

# The permission letters of each interaction kind (operations: see `_perms`).
KIND_PERMS = {
    "read": "r", "vread": "r", "history-instance": "r",
    "search-type": "s", "search-system": "s", "history-type": "s", "history-system": "s",
    "create": "c", "update": "u", "patch": "u", "delete": "d",
}


def unauthenticated() -> FhirError:
    return FhirError(401, [Issue("error", "login", "this request needs an access token: send "
                                 "Authorization: Bearer <token> (SMART App Launch or Backend "
                                 "Services, see /fhir/.well-known/smart-configuration)")],
                     {"WWW-Authenticate": CHALLENGE})


def forbidden(scope: str, what: str) -> FhirError:
    err = BearerError.insufficient_scope(scope)
    return FhirError(403, [Issue("error", "forbidden", f"the access token does not allow {what}; "
                                 f"it would need scope {scope}")],
                     {"WWW-Authenticate": err.www_authenticate})


class SmartAuthenticator:
    """Bearer access tokens → `Principal` (RFC 6750, RFC 9068)."""

    def __init__(self, keyring: Keyring, *, issuer: str, audience: str,
                 registry: Registry | None = None) -> None:
        self._store: AuthStore | None = None  # the app's auth store, looked up per request
        self._addressed: dict[tuple[str | None, str], Principal] = {}
        self._fast: dict[str, tuple[Principal, float]] = {}
        self.verifier = BearerVerifier(keyring, issuer=issuer, audience=audience,
                                       revoked=self._is_revoked, registry=registry)

    def _is_revoked(self, jti: str, grant_id: str | None) -> bool:
        store = self._store
        if store is None:
            return True  # fail closed outside the app's lifespan
        return store.is_revoked(jti, grant_id)

    def _verify(self, header: str) -> Principal:
        """`BearerVerifier.verify`, with a front cache keyed by the header value itself: a hit
        skips the syntax checks, the hash and the verifier's lock (~3 µs of an authorized read)
        but never the revocation check nor the token's expiry."""
        now = time.time()
        entry = self._fast.get(header)
        if entry is not None and now < entry[1]:
            principal = entry[0]
            assert principal.token_id is not None
            if not self._is_revoked(principal.token_id, principal.grant_id):
                return principal
            self._fast.pop(header, None)
        principal = self.verifier.verify(header)  # raises for a revoked token, too
        until = min(float(principal.expires_at or now), now + FAST_CACHE_SECONDS)
        if len(self._fast) >= FAST_CACHE_SIZE:
            self._fast.clear()
        self._fast[header] = (principal, until)
        return principal

    async def authenticate(self, conn: HTTPConnection) -> Principal:
        client = conn.client
        address = client.host if client else None
        header = conn.headers.get("authorization")
        if header is None:
            return Principal(address=address)
        state = getattr(conn.scope.get("app"), "state", None)
        self._store = state._state.get("auth_store") if state is not None else None
        try:
            principal = self._verify(header)
        except BearerError as exc:
            status = exc.status
            code = "login" if status == 401 else "invalid"
            text = exc.description or "the request carries no bearer access token"
            raise FhirError(status, [Issue("error", code, text)],
                            {"WWW-Authenticate": exc.www_authenticate}) from None
        if principal.internal:  # never from a token; belt and braces
            raise unauthenticated()
        if not address:
            return principal
        # The verifier caches one Principal per token; the caller's address varies per request.
        key = (principal.token_id, address)
        found = self._addressed.get(key)
        if found is None or found.scope_set is not principal.scope_set:
            found = dataclasses.replace(principal, address=address)
            if len(self._addressed) >= ADDRESSED_CACHE:
                self._addressed.clear()
            self._addressed[key] = found
        return found


class SmartAuthorizer:
    """The `Authorizer` hook for SMART scopes (see module docstring)."""

    def __init__(self, registry: Registry, indexer: Indexer) -> None:
        self.registry = registry
        self.compartment = PatientCompartment(registry, indexer)
        self.matcher = Matcher(registry, indexer, self.compartment)
        self._policies: dict[Any, AccessPolicy] = {}
        self._memberships: dict[tuple[str, str, int], frozenset[str]] = {}

    def policy(self, principal: Principal) -> AccessPolicy:
        # Keyed by the token (its jti); a plain dict read is atomic, so no lock on hits.
        key: Any = principal.token_id or principal
        found = self._policies.get(key)
        if found is not None and found.principal.scope_set is principal.scope_set and \
                found.principal.patient == principal.patient:
            return found
        found = AccessPolicy(principal, self.compartment)
        if len(self._policies) >= POLICY_CACHE:
            self._policies.clear()  # tokens live an hour at most: starting over is cheap
        self._policies[key] = found
        return found

    # -- token-only decisions ----------------------------------------------------------------

    async def check(self, principal: Principal, interaction: Interaction) -> None:
        if principal.internal:
            return
        if principal.anonymous or principal.scope_set is None:
            raise unauthenticated()
        policy = self.policy(principal)
        type_ = interaction.resource_type
        for perm in _perms(interaction):
            if type_ is None:
                if not any(perm in s.permissions for s in principal.scope_set.clinical):
                    raise forbidden(policy.needed_scope(None, perm), _what(interaction))
            elif policy.rule(type_, perm).deny:
                raise forbidden(policy.needed_scope(type_, perm), _what(interaction))

    def rule(self, principal: Principal, resource_type: str, perm: str) -> Rule:
        return self.policy(principal).rule(resource_type, perm)

    def restricted(self, principal: Principal) -> bool:
        """False only when every rule is ALL for every permission: internal callers, and
        `system/*.cruds` or a practitioner's `user/*.cruds` without a query."""
        if principal.internal:
            return False
        if principal.anonymous or principal.scope_set is None:
            return True
        practitioner = (principal.fhir_user or "").startswith("Practitioner/")
        return not any(
            s.resource_type == "*" and not s.query and s.permissions == "cruds" and (
                s.context == "system" or (s.context == "user" and practitioner))
            for s in principal.scope_set.clinical)

    # -- one resource -------------------------------------------------------------------------

    def visible(self, principal: Principal, version: StoredVersion, perm: str = "r") -> bool:
        if principal.internal:
            return True
        rule = self.policy(principal).rule(version.type, perm)
        if rule.all:
            return True
        if rule.deny or version.deleted or not version.body:
            return False
        if all(alt.compartment is not None and not alt.query for alt in rule.alternatives):
            patients = self._patients_of(version)
            return any(alt.compartment in patients for alt in rule.alternatives)
        resource = orjson.loads(version.body)
        return isinstance(resource, dict) and self.matcher.matches(rule, resource)

    def _patients_of(self, version: StoredVersion) -> frozenset[str]:
        """The patients whose compartment holds this version. A stored version never changes,
        so the answer is kept per (type, id, version): a patient app reading the same records
        again skips the JSON parse and the FHIRPath extraction (~30 µs of a ~80 µs read)."""
        key = (version.type, version.id, version.version)
        patients = self._memberships.get(key)
        if patients is None:
            resource = orjson.loads(version.body)
            patients = (self.matcher.compartment.patients_of(resource)
                        if isinstance(resource, dict) else frozenset())
            if len(self._memberships) >= MEMBERSHIP_CACHE:
                self._memberships.clear()  # (atomic: safe from a threadpool too)
            self._memberships[key] = patients
        return patients

    def writable(self, principal: Principal, resource: dict[str, Any], perm: str) -> bool:
        if principal.internal:
            return True
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str):
            return False
        rule = self.policy(principal).rule(rtype, perm)
        return not rule.deny and self.matcher.matches(rule, resource)

    def searchable_types(self, principal: Principal,
                         types: Sequence[str]) -> tuple[list[str], bool]:
        if principal.internal:
            return list(types), False
        policy = self.policy(principal)
        rules = {t: policy.rule(t, "s") for t in types}
        allowed = [t for t, r in rules.items() if not r.deny]
        return allowed, any(not rules[t].all for t in allowed)

    def access_clauses(self, principal: Principal, types: Sequence[str],
                       perm: str) -> list[Clause] | None:
        if principal.internal:
            return None
        policy = self.policy(principal)
        rules = {t: policy.rule(t, perm) for t in types}
        allowed = {t: r for t, r in rules.items() if not r.deny}
        if len(allowed) == len(rules) and all(r.all for r in allowed.values()):
            return None
        if len(rules) == 1:
            [(t, rule)] = rules.items()
            return [AnyOf(())] if rule.deny else self.matcher.clauses(t, rule)
        return [AnyOf(tuple((TypeIs(t), *self.matcher.clauses(t, r))
                            for t, r in allowed.items()))]

    # -- searches ------------------------------------------------------------------------------

    def restrict(self, principal: Principal, query: SearchQuery, perm: str = "s") -> SearchQuery:
        if principal.internal:
            return query
        if principal.anonymous or principal.scope_set is None:
            raise unauthenticated()
        policy = self.policy(principal)
        query.owner = principal.key
        types = query.resource_types
        rules = {t: policy.rule(t, perm) for t in types}
        for t, rule in rules.items():
            if rule.deny:
                raise forbidden(policy.needed_scope(t, perm), f"searching {t}")
        query.clauses = [self._restrict_clause(policy, c) for c in query.clauses]
        if len(types) == 1:
            query.clauses.extend(self.matcher.clauses(types[0], rules[types[0]]))
        elif not all(r.all for r in rules.values()):
            query.clauses.append(AnyOf(tuple(
                (TypeIs(t), *self.matcher.clauses(t, r)) for t, r in rules.items())))
        for spec in query.includes:
            named = spec.source_type if spec.reverse else spec.target_type
            if named and named != "*" and policy.rule(named, "r").deny:
                param = f"{spec.source_type}:{spec.param or '*'}"
                raise forbidden(policy.needed_scope(named, "r"),
                                f"including {named} ({param})")
        if query.includes:
            query.include_filter = lambda v: self.visible(principal, v, "r")
        return query

    def _restrict_clause(self, policy: AccessPolicy, clause: Clause) -> Clause:
        if isinstance(clause, Chain):
            targets: list[tuple[str, Clause]] = []
            for target, inner in clause.targets:
                rule = policy.rule(target, "s")
                if rule.deny:
                    continue  # this kind of target cannot match for this token
                inner = self._restrict_clause(policy, inner)
                access = self.matcher.clauses(target, rule)
                targets.append((target, AnyOf(((inner, *access),)) if access else inner))
            if not targets:
                first = clause.targets[0][0]
                raise forbidden(policy.needed_scope(first, "s"),
                                f"a chained search through {clause.resource_type}."
                                f"{clause.param.code} into {first}")
            return Chain(clause.resource_type, clause.param, tuple(targets))
        if isinstance(clause, Has):
            rule = policy.rule(clause.source_type, "s")
            if rule.deny:
                raise forbidden(policy.needed_scope(clause.source_type, "s"),
                                f"_has on {clause.source_type}")
            inner = self._restrict_clause(policy, clause.inner)
            access = self.matcher.clauses(clause.source_type, rule)
            return Has(clause.resource_type, clause.source_type, clause.param,
                       AnyOf(((inner, *access),)) if access else inner)
        if isinstance(clause, AnyOf):
            return AnyOf(tuple(tuple(self._restrict_clause(policy, c) for c in alt)
                               for alt in clause.alternatives))
        return clause


def _perms(interaction: Interaction) -> str:
    if interaction.permissions is not None:
        return interaction.permissions
    if interaction.kind == "operation":
        op = interaction.operation
        if op == "$everything":
            return "s"
        if op == "$validate":
            return "r" if interaction.resource_id else "c"
        if op == "$import-cn":
            return "cu"
        return "r"
    return KIND_PERMS.get(interaction.kind, "r")


def _what(interaction: Interaction) -> str:
    target = interaction.resource_type or "the system"
    name = interaction.operation or interaction.kind
    return f"{name} on {target}"


def build_smart_hooks(settings: Settings, keyring: Keyring) -> Hooks:
    """The authenticator and authorizer of a server with `auth = "smart"`."""
    registry = load_registry()
    urls = AuthUrls.from_base_url(settings.base_url)
    indexer = Indexer.from_settings(registry, settings)
    return Hooks(authenticator=SmartAuthenticator(keyring, issuer=urls.issuer,
                                                  audience=urls.fhir_base, registry=registry),
                 authorizer=SmartAuthorizer(registry, indexer))


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_dev_flag(settings: Settings) -> str | None:
    """`yilian serve` refuses `auth=off` unless it listens on a loopback host: raises
    `SystemExit` with the reason; returns the banner to print when auth is off (None when on)."""
    if settings.auth != "off":
        return None
    if not is_loopback(settings.host):
        raise SystemExit(f"YILIAN_AUTH=off switches authorization off and is only allowed on a "
                         f"loopback host (127.0.0.1, ::1, localhost); YILIAN_HOST is "
                         f"{settings.host!r}. Unset YILIAN_AUTH (default smart) to serve on "
                         "this address.")
    return ("WARNING: YILIAN_AUTH=off: authorization is OFF; every FHIR request is allowed "
            "without a token (development only, loopback host)")
