"""Configuration: `YILIAN_*` environment variables (also read from `.env`).

Every setting is listed with its default in the README; keep the two in step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="YILIAN_", env_file=".env", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    # Public base URL of the FHIR endpoint; used in Location headers, links and fullUrls.
    # Empty: http://<host>:<port>/fhir (127.0.0.1 when listening on every address).
    base_url: str = ""
    var_dir: Path = Path("var")
    # `sqlite` (embedded, under var_dir) or a `mongodb://` URI (scale-out store, later issue).
    store: str = "sqlite"
    # Time zone assumed for dates and times that carry none (China Standard Time).
    default_timezone: str = "+08:00"
    max_body_bytes: int = 16 * 1024 * 1024
    default_page_size: int = 20
    max_page_size: int = 1000
    # How long a search's result snapshot (behind its paging links) is kept.
    search_snapshot_seconds: int = 3600
    max_bundle_entries: int = 10000
    log_level: str = "info"
    # `yilian serve` loads a small synthetic demo hospital into an empty store.
    demo: bool = True
    # The CN conformance resources (profiles, terminology, SearchParameters) loaded at start-up.
    profiles_dir: Path = Path(__file__).resolve().parents[1] / "fhir_profiles"
    # JWS algorithm of the access tokens Yilian signs (id_tokens are always RS256).
    token_alg: Literal["RS256", "ES384"] = "RS256"
    # `smart`: every FHIR interaction needs a SMART access token (metadata and discovery stay
    # public). `off`: no authorization at all — development only, refused unless `host` is a
    # loopback address.
    auth: Literal["smart", "off"] = "smart"
    # Lifetimes (seconds unless named otherwise). Access tokens of user flows live at most 1 h.
    access_token_seconds: int = Field(default=3600, ge=60, le=3600)
    code_seconds: int = Field(default=120, ge=10, le=600)
    offline_refresh_days: int = Field(default=90, ge=1, le=365)
    session_idle_minutes: int = Field(default=30, ge=1, le=720)
    # Initial access token accepted by RFC 7591 dynamic registration (`POST /auth/register`);
    # empty: only tokens made with `yilian clients token` (stored hashed in the auth store).
    registration_token: str = ""
    # `off`: no AuditEvents at all — for measuring what auditing costs (bench/); like
    # auth=off it is refused unless `host` is a loopback address.
    audit: Literal["on", "off"] = "on"
    # The audit trail and its chain (docs/chain.md). `dev`: `yilian serve` runs anvil under
    # var/chain/ and deploys the contracts there; `rpc`: use the EVM chain at `chain_rpc`;
    # `off`: AuditEvents are kept but nothing is anchored (tests and tools only).
    chain: Literal["dev", "rpc", "off"] = "dev"
    chain_rpc: str = ""  # set: `chain` becomes `rpc` (any EVM JSON-RPC endpoint)
    # Hex private key of this node's writer account; default var/chain/node.key (made on
    # first start of the dev chain, mode 0600).
    chain_key_file: Path | None = None
    # `deploy`: deploy the contracts on first start (dev chain, or a chain where this node's
    # key is admin); `attach`: use the addresses below (a consortium deployed them).
    chain_contracts: Literal["deploy", "attach"] = "deploy"
    chain_audit_log: str = ""
    chain_consent_registry: str = ""
    chain_anchor: str = ""
    chain_poa: bool = False  # PoA chain (geth clique, Besu IBFT): extraData middleware
    # anvil state dump period (s). A dump holds anvil's RPC for its whole length, and anvil
    # keeps ~800 bytes of traces and receipt per anchored entry: at 300 MB (~350,000 entries) a
    # dump takes ~0.7 s, so frequent dumps became the anchoring latency's tail
    chain_state_interval: int = Field(default=30, ge=1)
    # Blocks on top of an entry's block before its proof is written back (1: mined).
    chain_confirmations: int = Field(default=1, ge=1, le=64)
    anchor_batch_size: int = Field(default=1000, ge=1, le=1000)
    anchor_interval_ms: int = Field(default=200, ge=10, le=60000)
    # Whether uvicorn workers run the anchoring worker (one at a time, by lease). `yilian serve`
    # runs it in a process of its own instead (`yilian anchor`) and sets this to false, so
    # signing and sending never take the GIL from request handling.
    anchor_in_workers: bool = True
    # True: writes are refused (503) while the outbox cannot reach the chain; reads go on.
    audit_fail_closed: bool = False
    # Fail closed once the oldest unanchored entry is this old (seconds).
    audit_fail_closed_lag_seconds: int = Field(default=30, ge=1)

    @model_validator(mode="after")
    def _derive_base_url(self) -> Settings:
        if not self.base_url:
            host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
            host = f"[{host}]" if ":" in host else host
            self.base_url = f"http://{host}:{self.port}/fhir"
        if self.chain_rpc and self.chain == "dev":
            self.chain = "rpc"
        return self

    @property
    def chain_dir(self) -> Path:
        """The dev chain's state, this node's key and the deployment record."""
        return self.var_dir / "chain"

    @property
    def sqlite_path(self) -> Path:
        return self.var_dir / "yilian.sqlite3"

    @property
    def audit_path(self) -> Path:
        """AuditEvents and the chain outbox (app/storage/sqlite_audit.py)."""
        return self.var_dir / "audit.sqlite3"

    @property
    def keys_dir(self) -> Path:
        """The token signing keyring (`app/auth/keys.py`): private keys, mode 0700."""
        return self.var_dir / "keys"
