"""`yilian clients|users|keys|tokens`: the SMART authorization state an administrator manages from
the shell (registered clients, user accounts, token signing keys), and access tokens minted
directly with the server's keys (`yilian tokens mint`, for scripts and the overhead benchmark)."""

from __future__ import annotations

import argparse
import re
import sys
from contextlib import closing
from typing import TYPE_CHECKING

from app.config import Settings

if TYPE_CHECKING:
    from app.auth.sqlite_store import SqliteAuthStore


AUTH_COMMANDS = frozenset({"clients", "users", "keys", "tokens"})


class UsageError(Exception):
    """A command-line problem: reported as one line on stderr, exit code 2."""


def _auth_store() -> SqliteAuthStore:
    from app.auth.sqlite_store import SqliteAuthStore

    return SqliteAuthStore.in_var_dir(Settings().var_dir)


def _duration(text: str) -> int:
    """`90`, `90s`, `15m`, `1h`, `7d` -> seconds."""
    m = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    if not m or int(m[1]) == 0:
        raise UsageError(f"--ttl {text!r} is not a positive duration such as 30m, 1h or 7d")
    return int(m[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]


def _read_password() -> str:
    line = sys.stdin.readline()
    password = line[:-1] if line.endswith("\n") else line
    password = password[:-1] if password.endswith("\r") else password
    if not password:
        raise UsageError("no password on stdin (give it as the first line)")
    return password


def _clients_add(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from app.auth.clients import register_client
    from app.auth.store import ClientKind

    kind: ClientKind
    jwks = None
    if args.public:
        kind = "public"
    elif args.secret:
        kind = "symmetric"
    else:
        kind = "asymmetric"
        if args.jwks_file:
            try:
                jwks = json.loads(Path(args.jwks_file).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise UsageError(f"--jwks-file {args.jwks_file}: {exc}") from None
    with closing(_auth_store()) as store:
        done = register_client(store, name=args.name, name_en=args.name_en, kind=kind,
                               client_id=args.client_id, redirect_uris=args.redirect_uri,
                               launch_uri=args.launch_uri, jwks=jwks, jwks_uri=args.jwks_uri,
                               scope=args.scope)
    if args.json:
        out = {"client_id": done.client.client_id, "kind": done.client.kind,
               "scope": done.client.scope}
        if done.secret is not None:
            out["client_secret"] = done.secret
        print(json.dumps(out, ensure_ascii=False))
        return 0
    print(f"client_id: {done.client.client_id}")
    if done.secret is not None:
        print(f"client_secret: {done.secret}")
        print("(the secret is shown only this once and stored hashed; keep it now)",
              file=sys.stderr)
    return 0


def _clients_list(args: argparse.Namespace) -> int:
    import json

    with closing(_auth_store()) as store:
        clients = store.list_clients()
    if args.json:
        print(json.dumps([{"client_id": c.client_id, "kind": c.kind, "name_zh": c.name_zh,
                           "name_en": c.name_en, "redirect_uris": list(c.redirect_uris),
                           "launch_uri": c.launch_uri, "jwks_uri": c.jwks_uri,
                           "scope": c.scope, "grant_types": list(c.grant_types)}
                          for c in clients], ensure_ascii=False, indent=2))
        return 0
    print("client_id\tkind\tname\tgrant_types\tredirect_uris\tscope")
    for c in clients:
        print("\t".join((c.client_id, c.kind, c.name_zh, ",".join(c.grant_types),
                         " ".join(c.redirect_uris) or "-", c.scope)))
    return 0


def _clients_remove(args: argparse.Namespace) -> int:
    with closing(_auth_store()) as store:
        if not store.remove_client(args.client_id):
            raise UsageError(f"no client {args.client_id!r}")
    print(f"removed client {args.client_id}")
    return 0


def _clients_token(args: argparse.Namespace) -> int:
    from app.auth.clients import issue_registration_token

    ttl = _duration(args.ttl)
    with closing(_auth_store()) as store:
        token = issue_registration_token(store, uses=args.uses, ttl_seconds=ttl)
    print(token)
    return 0


def _users_add(args: argparse.Namespace) -> int:
    import time

    from app.auth.passwords import Passwords
    from app.auth.store import User, check_fhir_user

    check_fhir_user(args.fhir_user)  # before the (slow) hash
    password = _read_password()
    user = User(username=args.username, password_hash=Passwords().hash(password),
                fhir_user=args.fhir_user, locale=args.locale,
                access="all" if args.fhir_user.startswith("Practitioner/") else "compartment",
                created=time.time())
    with closing(_auth_store()) as store:
        store.add_user(user)
    print(f"added user {user.username} ({user.fhir_user})")
    return 0


def _users_list(args: argparse.Namespace) -> int:
    with closing(_auth_store()) as store:
        users = store.list_users()
    print("username\tfhir_user\taccess\tlocale\tstatus")
    for u in users:
        print("\t".join((u.username, u.fhir_user, u.access, u.locale,
                         "disabled" if u.disabled else "active")))
    return 0


def _users_disable(args: argparse.Namespace) -> int:
    disabled = args.users_command == "disable"
    with closing(_auth_store()) as store:
        if not store.set_user_disabled(args.username, disabled):
            raise UsageError(f"no user {args.username!r}")
    print(f"{'disabled' if disabled else 'enabled'} user {args.username}")
    return 0


def _users_passwd(args: argparse.Namespace) -> int:
    from app.auth.passwords import Passwords

    with closing(_auth_store()) as store:
        if store.get_user(args.username) is None:
            raise UsageError(f"no user {args.username!r}")
        password_hash = Passwords().hash(_read_password())
        if not store.set_password_hash(args.username, password_hash):
            raise UsageError(f"no user {args.username!r}")
    print(f"changed the password of {args.username}")
    return 0


# Longest lifetime of a token a signing key may have signed: access tokens live <= 3600 s
# (plan §0), id_tokens no longer.
_TOKEN_LIFETIME_SECONDS = 3600


def _keys(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from app.auth.keys import Keyring, KeyringError

    def when(t: int | None) -> str:
        return "-" if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")

    settings = Settings()
    keyring = Keyring(settings.keys_dir, settings.token_alg)
    try:
        if args.keys_command == "rotate":
            kid = keyring.rotate(_TOKEN_LIFETIME_SECONDS)
            print(f"new active {settings.token_alg} key {kid}; the previous keys keep "
                  f"validating for {_TOKEN_LIFETIME_SECONDS} s + leeway, then `yilian keys "
                  "prune` deletes them")
        elif args.keys_command == "prune":
            pruned = keyring.prune()
            print("pruned " + ", ".join(pruned) if pruned else "nothing to prune")
        else:
            infos = keyring.keys()
            if not infos:
                print(f"no signing keys in {settings.keys_dir} yet (`yilian serve` or `yilian "
                      "keys rotate` creates them)", file=sys.stderr)
            print("kid\talg\tstatus\tcreated\tretire_after")
            for k in infos:
                print("\t".join((k.kid, k.alg, k.status, when(k.created),
                                 when(k.retire_after))))
    except KeyringError as exc:
        raise UsageError(str(exc)) from None
    return 0


# A FHIR logical id (R4 §2.1.27.3 id datatype).
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def _tokens_mint(args: argparse.Namespace) -> int:
    """Sign an access token with the active key of the configured var dir, exactly as the token
    endpoint would (same issuer, audience and claims), without a client or a grant."""
    from app.auth.bearer import MAX_LIFETIME_SECONDS, issue_access_token
    from app.auth.keys import Keyring, KeyringError
    from app.auth.routes_token import AuthUrls
    from app.auth.scopes import needs_encounter_context, needs_patient_context, parse_scopes
    from app.auth.store import check_fhir_user

    parsed = parse_scopes(args.scope)
    if parsed.invalid:
        bad = parsed.invalid[0]
        raise UsageError(f"--scope {bad.scope[:80]!r}: {bad.reason}")
    scopes = parsed.scopes
    if not scopes.clinical:
        raise UsageError("--scope has no resource scope (e.g. system/*.rs, "
                         "patient/Observation.rs, user/*.cruds)")
    if needs_patient_context(scopes) and args.patient is None:
        raise UsageError("patient/ scopes need the patient in context: give --patient <id>")
    if args.patient is not None and not _FHIR_ID.fullmatch(args.patient):
        raise UsageError(f"--patient {args.patient[:80]!r} is not a FHIR id")
    if needs_encounter_context(scopes) and args.encounter is None:
        raise UsageError("launch/encounter needs the encounter in context: give --encounter <id>")
    if args.encounter is not None and not _FHIR_ID.fullmatch(args.encounter):
        raise UsageError(f"--encounter {args.encounter[:80]!r} is not a FHIR id")
    if args.fhir_user is not None:
        check_fhir_user(args.fhir_user)
    if not args.client_id or not args.client_id.strip():
        raise UsageError("--client-id must not be empty")
    if args.subject is not None and not args.subject.strip():
        raise UsageError("--subject must not be empty")
    if not 0 < args.lifetime <= MAX_LIFETIME_SECONDS:
        raise UsageError(f"--lifetime must be 1..{MAX_LIFETIME_SECONDS} seconds, "
                         f"got {args.lifetime}")
    settings = Settings()
    urls = AuthUrls.from_base_url(settings.base_url)
    try:
        keyring = Keyring(settings.keys_dir, settings.token_alg)
        keyring.ensure()  # what `yilian serve` does at start: the same keys either way
        token = issue_access_token(
            keyring, issuer=urls.issuer, audience=urls.fhir_base, client_id=args.client_id,
            scope=scopes, subject=args.subject or args.client_id, fhir_user=args.fhir_user,
            patient=args.patient, encounter=args.encounter, lifetime=args.lifetime)
    except KeyringError as exc:
        raise UsageError(str(exc)) from None
    print(token)
    return 0


def add_auth_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    clients = sub.add_parser("clients", help="OAuth clients: SMART apps and backend services")
    csub = clients.add_subparsers(dest="clients_command", required=True)
    add = csub.add_parser("add", help="register a client; prints its client_id (and the "
                          "secret of a --secret client, once)")
    add.add_argument("--name", required=True, help="name shown to users (Chinese)")
    add.add_argument("--name-en", help="English name (default: --name)")
    add.add_argument("--client-id", help="choose the client_id (default: random)")
    kind = add.add_mutually_exclusive_group(required=True)
    kind.add_argument("--public", action="store_true",
                      help="public client (browser or native app, PKCE only)")
    kind.add_argument("--secret", action="store_true",
                      help="confidential client with a generated client secret")
    kind.add_argument("--jwks-file", help="confidential client: its public JWK Set (JSON)")
    kind.add_argument("--jwks-uri", help="confidential client: URL of its public JWK Set")
    add.add_argument("--redirect-uri", action="append", default=[],
                     help="exact redirect URI (repeat for several); https, or http on "
                          "127.0.0.1, [::1] or localhost")
    add.add_argument("--launch-uri", help="where an EHR launch opens the app")
    add.add_argument("--scope", help="scope ceiling (default: read-only patient/user scopes, "
                     "or system/*.rs for backend services)")
    add.add_argument("--json", action="store_true", help="print JSON")
    add.set_defaults(func=_clients_add)
    lst = csub.add_parser("list", help="list registered clients")
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.set_defaults(func=_clients_list)
    rm = csub.add_parser("remove", help="remove a client")
    rm.add_argument("client_id")
    rm.set_defaults(func=_clients_remove)
    tok = csub.add_parser("token", help="print an initial access token for dynamic client "
                          "registration (POST /auth/register, RFC 7591)")
    tok.add_argument("--uses", type=int, default=1, help="registrations it allows (default 1)")
    tok.add_argument("--ttl", default="1h", help="lifetime, e.g. 30m, 1h, 7d (default 1h)")
    tok.set_defaults(func=_clients_token)

    users = sub.add_parser("users", help="user accounts: patients and practitioners")
    usub = users.add_subparsers(dest="users_command", required=True)
    uadd = usub.add_parser("add", help="add a user; the password is read from stdin")
    uadd.add_argument("--username", required=True)
    uadd.add_argument("--fhir-user", required=True,
                      help="Patient/<id> or Practitioner/<id> the user signs in as")
    uadd.add_argument("--password-stdin", action="store_true", required=True,
                      help="read the password from the first line of stdin")
    uadd.add_argument("--locale", choices=("zh", "en"), default="zh")
    uadd.set_defaults(func=_users_add)
    usub.add_parser("list", help="list users").set_defaults(func=_users_list)
    for name, text in (("disable", "stop a user from signing in"),
                       ("enable", "allow a disabled user to sign in again")):
        p = usub.add_parser(name, help=text)
        p.add_argument("username")
        p.set_defaults(func=_users_disable)
    pw = usub.add_parser("passwd", help="set a user's password (read from stdin)")
    pw.add_argument("username")
    pw.add_argument("--password-stdin", action="store_true", required=True,
                    help="read the password from the first line of stdin")
    pw.set_defaults(func=_users_passwd)

    keys = sub.add_parser("keys", help="token signing keys under <YILIAN_VAR_DIR>/keys/")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    ksub.add_parser("list", help="list signing keys").set_defaults(func=_keys)
    ksub.add_parser("rotate", help="add new active keys; the old ones retire once the tokens "
                    "they signed have expired").set_defaults(func=_keys)
    ksub.add_parser("prune", help="delete retired keys past retire_after").set_defaults(
        func=_keys)

    tokens = sub.add_parser("tokens", help="access tokens signed with the keys under "
                            "<YILIAN_VAR_DIR>/keys/ (administrators, scripts, benchmarks)")
    tsub = tokens.add_subparsers(dest="tokens_command", required=True)
    mint = tsub.add_parser(
        "mint", help="print an access token for this server (its issuer and audience come from "
        "YILIAN_BASE_URL); no client registration or user sign-in is checked, so treat the "
        "output like a password")
    mint.add_argument("--client-id", required=True, help="the client_id claim")
    mint.add_argument("--scope", required=True,
                      help='granted scopes, e.g. "system/*.rs" or "patient/*.rs" (with --patient)')
    mint.add_argument("--patient", help="patient in context (required by patient/ scopes)")
    mint.add_argument("--encounter", help="encounter in context")
    mint.add_argument("--fhir-user", help="Patient/<id> or Practitioner/<id>: the fhirUser claim")
    mint.add_argument("--subject", help="the sub claim (default: the client id, as for backend "
                      "services)")
    mint.add_argument("--lifetime", type=int, default=3600,
                      help="seconds until the token expires, at most 3600 (default 3600)")
    mint.set_defaults(func=_tokens_mint)
