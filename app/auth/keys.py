"""Token signing keyring: RFC 7517 JWK Set, RFC 7638 key ids, RFC 7515 compact JWS.

One directory (default `<YILIAN_VAR_DIR>/keys/`, mode 0700) holds

- `keyring.json`: `{"keys": [{kid, alg, use: "sig", status: "active"|"retiring", created,
  retire_after}]}`, times as JWT NumericDates (integer seconds since the epoch, UTC);
- `<kid>.pem`: each private key, PKCS#8, mode 0600; `kid` is the key's RFC 7638 thumbprint;
- `keyring.lock`: present only while a process changes the keyring (`O_CREAT|O_EXCL`).

There is at most one active key per algorithm. RS256 always has one (id_tokens are RS256, OpenID
Connect Discovery §3); the keyring's own `alg` (`YILIAN_TOKEN_ALG`, RS256 or ES384) names the key
that signs access tokens. `rotate` replaces every active key and keeps the old ones as `retiring`
until every token they signed has expired, so `jwks()` (active + retiring) keeps validating them;
`prune` then deletes them.

Readers never take the lock: writers put a new `<kid>.pem` in place before `keyring.json` lists it,
replace `keyring.json` atomically, and delete a pruned `.pem` only after `keyring.json` stopped
listing it. Each process holds the parsed keys in memory and re-reads them when `keyring.json`
changes (`reload_if_changed`, at most once a second, and at once when a token names an unknown kid).

`verify` checks the signature only: which key (by `kid`, from this keyring and nowhere else — `jku`,
`jwk`, `x5u` headers are ignored), which algorithm (the key's own; never `none`, never HS*), and
optionally `typ`. Expiry, audience and issuer are the resource server's job.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from joserfc import errors as jose_errors
from joserfc import jws, jwt
from joserfc.jwk import ECKey, RSAKey
from joserfc.jws import JWSRegistry

log = logging.getLogger("yilian.auth.keys")

SUPPORTED_ALGS: tuple[str, ...] = ("RS256", "ES384")
# Tokens stay verifiable this long past their own lifetime after a rotation (clock skew, queues).
ROTATION_LEEWAY_SECONDS = 300
RSA_BITS = 2048
EC_CURVE = "P-384"
LOCK_TIMEOUT_SECONDS = 30.0
# A lock file this old belongs to a process that died mid-change (a change takes milliseconds).
STALE_LOCK_SECONDS = 20.0
RELOAD_INTERVAL_SECONDS = 1.0

KEYRING_FILE = "keyring.json"
LOCK_FILE = "keyring.lock"

# One registry per algorithm: joserfc's default allows only its "recommended" algorithms (no
# ES384), and a registry naming exactly the key's algorithm refuses every other `alg` by itself.
_REGISTRIES = {alg: JWSRegistry(algorithms=[alg]) for alg in SUPPORTED_ALGS}

Key = RSAKey | ECKey


class KeyringError(Exception):
    """The keyring on disk is unusable, locked too long, or has no key for what was asked."""


class InvalidTokenError(Exception):
    """A token this keyring does not vouch for; the message says why (safe to log, no secrets)."""


class MalformedTokenError(InvalidTokenError):
    """Not a compact JWS with a JSON object header and payload."""


class AlgorithmNotAllowedError(InvalidTokenError):
    """`alg` is not the algorithm of the key the token names (includes `none` and HS*)."""


class UnknownKidError(InvalidTokenError):
    """The token names no `kid`, or one that is neither active nor retiring here."""


class BadSignatureError(InvalidTokenError):
    """The signature does not verify with the named key (forged or altered token)."""


class WrongTokenTypeError(InvalidTokenError):
    """The `typ` header is not the one the caller expects (e.g. an id_token used as at+jwt)."""


@dataclass(frozen=True)
class KeyInfo:
    kid: str
    alg: str
    status: Literal["active", "retiring"]
    created: int
    # None while active; a retiring key is deleted by `prune` once this NumericDate has passed.
    retire_after: int | None


@dataclass(frozen=True)
class _Snapshot:
    infos: tuple[KeyInfo, ...]
    private: dict[str, Key]
    public: dict[str, Key]
    # (inode, mtime_ns, size) of keyring.json when read; None when it did not exist.
    stamp: tuple[int, int, int] | None


_EMPTY = _Snapshot((), {}, {}, None)


class Keyring:
    """The signing keys under `path`; see the module docstring for the layout and guarantees."""

    def __init__(self, path: Path, alg: str = "RS256", *,
                 clock: Callable[[], float] = time.time) -> None:
        if alg not in SUPPORTED_ALGS:
            raise KeyringError(f"token algorithm {alg!r} is not supported; use one of "
                               f"{', '.join(SUPPORTED_ALGS)}")
        self.path = Path(path)
        self.alg = alg
        self._clock = clock
        self._snapshot = _EMPTY
        self._loaded = False
        self._checked_at = float("-inf")

    # -- changing the keyring (under the lock) ----------------------------------------------------

    def ensure(self) -> None:
        """Make sure an active RS256 key and an active `alg` key exist, generating what is missing.

        Safe when several processes start at once: they serialise on the lock file and only the
        first generates. An active key of an algorithm no longer configured stays until `rotate`.
        """
        self._make_dir()
        self.reload_if_changed(force=True)
        if self._missing_algs(self._snapshot.infos):
            with self._locked():
                infos = list(self._read_infos())
                missing = self._missing_algs(tuple(infos))
                now = int(self._clock())
                for alg in missing:
                    infos.append(self._generate(alg, now))
                    log.info("generated the first %s signing key %s in %s", alg,
                             infos[-1].kid, self.path)
                if missing:
                    self._write_infos(infos)
                self._load()

    def rotate(self, lifetime_seconds: int) -> str:
        """Replace every active key by a new one (RS256 and `alg`); return the new `alg` key's kid.

        The replaced keys turn `retiring` with `retire_after = now + lifetime_seconds + 300 s`:
        `lifetime_seconds` is the longest lifetime of a token they may have signed.
        """
        if lifetime_seconds < 0:
            raise ValueError(f"lifetime_seconds must be >= 0, got {lifetime_seconds}")
        self._make_dir()
        with self._locked():
            now = int(self._clock())
            retire_after = now + lifetime_seconds + ROTATION_LEEWAY_SECONDS
            infos = [KeyInfo(i.kid, i.alg, "retiring", i.created, retire_after)
                     if i.status == "active" else i for i in self._read_infos()]
            new = {alg: self._generate(alg, now) for alg in self._wanted_algs()}
            infos = [*new.values(), *infos]
            self._write_infos(infos)
            self._load()
        log.info("rotated signing keys in %s: new %s", self.path,
                 ", ".join(f"{i.alg} {i.kid}" for i in new.values()))
        return new[self.alg].kid

    def prune(self) -> list[str]:
        """Delete retiring keys whose `retire_after` has passed; return their kids.

        Also deletes `.pem` files the keyring does not list (left by a crash between writing a
        new key and listing it).
        """
        if not (self.path / KEYRING_FILE).exists():
            return []
        with self._locked():
            now = self._clock()
            infos = self._read_infos()
            expired = [i.kid for i in infos if i.status == "retiring"
                       and i.retire_after is not None and i.retire_after <= now]
            if expired:
                self._write_infos([i for i in infos if i.kid not in expired])
            listed = {i.kid for i in infos if i.kid not in expired}
            for pem in self.path.glob("*.pem"):
                if pem.stem not in listed:
                    pem.unlink(missing_ok=True)
            self._load()
        if expired:
            log.info("pruned retired signing keys %s from %s", ", ".join(expired), self.path)
        return expired

    # -- reading -----------------------------------------------------------------------------------

    def keys(self) -> list[KeyInfo]:
        """Every key, active ones first, newest first within each status."""
        self.reload_if_changed()
        return _ordered(self._snapshot.infos)

    def jwks(self) -> dict[str, Any]:
        """The RFC 7517 JWK Set of active and retiring public keys (no private members)."""
        self.reload_if_changed()
        snap = self._snapshot
        return {"keys": [snap.public[i.kid].as_dict(private=False, kid=i.kid, alg=i.alg, use="sig")
                         for i in _ordered(snap.infos)]}

    def sign(self, claims: dict[str, Any], typ: str = "JWT", *, alg: str | None = None) -> str:
        """A compact JWS of `claims` signed with the active key of `alg` (default: the keyring's),
        header `{alg, kid, typ}` (`typ: at+jwt` for RFC 9068 access tokens)."""
        self.reload_if_changed()
        alg = alg or self.alg
        snap = self._snapshot
        info = next((i for i in snap.infos if i.status == "active" and i.alg == alg), None)
        if info is None:
            raise KeyringError(f"no active {alg} signing key in {self.path}; start the server "
                               "once or run `yilian keys rotate`")
        header = {"alg": alg, "kid": info.kid, "typ": typ}
        return jwt.encode(header, claims, snap.private[info.kid], algorithms=[alg],
                          registry=_REGISTRIES[alg], default_type=None)

    def verify(self, token: str, *, typ: str | None = None) -> dict[str, Any]:
        """The claims of `token` if one of this keyring's active or retiring keys signed it.

        Raises an `InvalidTokenError` subclass naming the reason. `typ`, when given, must match
        the header's `typ` (case-insensitive, an `application/` prefix allowed, RFC 8725 §3.11).
        Expiry, not-before, audience and issuer are NOT checked here.
        """
        self.reload_if_changed()
        try:
            obj = jws.extract_compact(token.encode("ascii"))
            header = obj.headers()
        except (jose_errors.JoseError, ValueError, TypeError, UnicodeError) as exc:
            raise MalformedTokenError(f"not a compact JWS: {exc}") from None
        alg = header.get("alg")
        if alg not in SUPPORTED_ALGS:
            raise AlgorithmNotAllowedError(f"alg {alg!r} is not accepted; tokens of this server "
                                           f"use {' or '.join(SUPPORTED_ALGS)}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise UnknownKidError("the token header names no kid")
        if kid not in self._snapshot.public:
            self.reload_if_changed(force=True)  # another process may just have rotated
        info = next((i for i in self._snapshot.infos if i.kid == kid), None)
        key = self._snapshot.public.get(kid)
        if info is None or key is None:
            raise UnknownKidError(f"kid {kid!r} is not a current signing key of this server")
        if alg != info.alg:
            raise AlgorithmNotAllowedError(f"kid {kid!r} is an {info.alg} key; the token "
                                           f"claims {alg}")
        if typ is not None and _media_type(header.get("typ")) != _media_type(typ):
            raise WrongTokenTypeError(f"typ {header.get('typ')!r} where {typ!r} is expected")
        try:
            valid = jws.validate_compact(obj, key, algorithms=[alg], registry=_REGISTRIES[alg])
        except jose_errors.JoseError as exc:
            raise MalformedTokenError(f"unacceptable JWS header: {exc}") from None
        if not valid:
            raise BadSignatureError(f"the signature does not verify with key {kid!r}")
        try:
            claims = json.loads(obj.payload or b"")
        except ValueError:
            raise MalformedTokenError("the payload is not JSON") from None
        if not isinstance(claims, dict):
            raise MalformedTokenError("the payload is not a JSON object")
        return claims

    def reload_if_changed(self, *, force: bool = False) -> bool:
        """Re-read the keyring when `keyring.json` changed since the last read; look at most once
        a second unless `force`. Returns whether it re-read."""
        now = time.monotonic()
        if not force and self._loaded and now - self._checked_at < RELOAD_INTERVAL_SECONDS:
            return False
        self._checked_at = now
        if self._loaded and _stamp(self.path / KEYRING_FILE) == self._snapshot.stamp:
            return False
        self._load()
        return True

    # -- internals ---------------------------------------------------------------------------------

    def _wanted_algs(self) -> list[str]:
        return list(dict.fromkeys(("RS256", self.alg)))

    def _missing_algs(self, infos: tuple[KeyInfo, ...] | list[KeyInfo]) -> list[str]:
        active = {i.alg for i in infos if i.status == "active"}
        return [alg for alg in self._wanted_algs() if alg not in active]

    def _make_dir(self) -> None:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.path.stat().st_mode & 0o077:
            os.chmod(self.path, 0o700)

    def _generate(self, alg: str, now: int) -> KeyInfo:
        key: Key = (RSAKey.generate_key(RSA_BITS, private=True) if alg == "RS256"
                    else ECKey.generate_key(EC_CURVE, private=True))
        kid = key.thumbprint()
        fd = os.open(self.path / f"{kid}.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key.as_pem(private=True))  # PKCS#8, unencrypted (the file is 0600)
            out.flush()
            os.fsync(out.fileno())
        return KeyInfo(kid, alg, "active", now, None)

    def _read_infos(self) -> list[KeyInfo]:
        file = self.path / KEYRING_FILE
        try:
            data = json.loads(file.read_bytes())
        except FileNotFoundError:
            return []
        except ValueError as exc:
            raise KeyringError(f"{file} is not valid JSON: {exc}") from None
        entries = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise KeyringError(f"{file} must be an object with a \"keys\" list")
        infos = []
        for n, entry in enumerate(entries):
            try:
                info = KeyInfo(str(entry["kid"]), str(entry["alg"]), entry["status"],
                               int(entry["created"]),
                               None if entry.get("retire_after") is None
                               else int(entry["retire_after"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise KeyringError(f"{file}: keys[{n}] is incomplete or mistyped ({exc!r}); "
                                   "expected kid, alg, status, created, retire_after") from None
            if info.alg not in SUPPORTED_ALGS or info.status not in ("active", "retiring"):
                raise KeyringError(f"{file}: keys[{n}] has alg {info.alg!r} / status "
                                   f"{info.status!r}; expected {SUPPORTED_ALGS} / active|retiring")
            if info.status == "retiring" and info.retire_after is None:
                raise KeyringError(f"{file}: retiring key {info.kid} has no retire_after")
            infos.append(info)
        return infos

    def _write_infos(self, infos: list[KeyInfo]) -> None:
        body = {"keys": [{"kid": i.kid, "alg": i.alg, "use": "sig", "status": i.status,
                          "created": i.created, "retire_after": i.retire_after} for i in infos]}
        tmp = self.path / f".{KEYRING_FILE}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(json.dumps(body, indent=2, ensure_ascii=False).encode() + b"\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path / KEYRING_FILE)
        _fsync_dir(self.path)

    def _load(self) -> None:
        """Read keyring.json and every key it lists into a new in-memory snapshot."""
        file = self.path / KEYRING_FILE
        for attempt in range(5):
            if attempt:
                time.sleep(0.01 * attempt)
            stamp = _stamp(file)
            infos = self._read_infos()
            private: dict[str, Key] = {}
            public: dict[str, Key] = {}
            try:
                for info in infos:
                    private[info.kid] = key = _read_private_key(self.path / f"{info.kid}.pem",
                                                                info)
                    public[info.kid] = type(key).import_key(key.as_dict(private=False))
            except FileNotFoundError:
                continue  # a concurrent prune removed a key after we read the list: read again
            if stamp == _stamp(file):
                self._snapshot = _Snapshot(tuple(infos), private, public, stamp)
                self._loaded = True
                return
        raise KeyringError(f"{file} lists a key whose .pem file is missing, or keeps changing "
                           "while being read")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self.path / LOCK_FILE
        deadline = time.monotonic() + LOCK_TIMEOUT_SECONDS
        while True:
            try:
                fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                if _break_if_stale(lock):
                    continue
                if time.monotonic() > deadline:
                    raise KeyringError(f"{lock} has been held by another process for "
                                       f"{LOCK_TIMEOUT_SECONDS:.0f} s ({_lock_owner(lock)}); "
                                       "delete it if that process is gone") from None
                time.sleep(0.01)
                continue
            with os.fdopen(fd, "w") as out:
                out.write(f"{os.getpid()} {socket.gethostname()}\n")
            break
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)


def _ordered(infos: tuple[KeyInfo, ...]) -> list[KeyInfo]:
    return sorted(infos, key=lambda i: (i.status != "active", -i.created, i.kid))


def _read_private_key(pem: Path, info: KeyInfo) -> Key:
    mode = pem.stat().st_mode
    if mode & 0o077:
        log.warning("%s is readable by other users (mode %o); it should be 0600", pem,
                    mode & 0o777)
    data = pem.read_bytes()
    key: Key = (RSAKey.import_key(data) if info.alg == "RS256" else ECKey.import_key(data))
    if not key.is_private:
        raise KeyringError(f"{pem} holds no private key")
    if key.thumbprint() != info.kid:
        raise KeyringError(f"{pem} does not hold key {info.kid} (its thumbprint is "
                           f"{key.thumbprint()})")
    return key


def _media_type(typ: object) -> str:
    value = str(typ or "").lower()
    return value.removeprefix("application/")


def _stamp(file: Path) -> tuple[int, int, int] | None:
    try:
        st = file.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock_owner(lock: Path) -> str:
    try:
        pid, _, host = lock.read_text().strip().partition(" ")
    except OSError:
        return "owner unknown"
    return f"pid {pid} on {host or 'unknown host'}"


def _break_if_stale(lock: Path) -> bool:
    """Remove a lock left by a dead process: its pid is gone on this host, or it is too old."""
    try:
        text = lock.read_text()
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return True  # released meanwhile: try again at once
    pid_text, _, host = text.strip().partition(" ")
    dead = False
    if host == socket.gethostname() and pid_text.isdigit():
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            dead = True
        except PermissionError:
            pass  # alive, another user's
    if not (dead or age > STALE_LOCK_SECONDS):
        return False
    # Rename first: of several processes breaking the same stale lock, exactly one succeeds.
    grave = lock.with_name(f"{LOCK_FILE}.stale.{os.getpid()}")
    try:
        os.rename(lock, grave)
    except FileNotFoundError:
        return True
    if grave.read_text() != text:
        # Between our look and the rename another process broke it and took the lock anew:
        # hand that lock back (link fails if yet another process holds one now).
        with contextlib.suppress(FileExistsError):
            os.link(grave, lock)
        grave.unlink(missing_ok=True)
        return True
    grave.unlink(missing_ok=True)
    log.warning("removed a stale keyring lock %s (%s)", lock, text.strip() or "empty")
    return True

