"""API keys, tenants and per-key limits.

Keys are random 32-byte tokens shown once at creation; the server stores only their SHA-256
(`<data_dir>/api_keys.json`, written atomically), each with its tenant and scopes (`admin` may
swap models and see every tenant). Voices belong to the tenant that created them; another
tenant asking for one gets the same 404 as for a voice that does not exist. Voice names are
unique per tenant (see `lookup_voice`, `voice_name_taken`).

Auth is required whenever the server binds to anything but loopback (or `require_auth` is set);
on loopback with no keys configured, every request acts as the `local` tenant with admin rights,
which is what `make serve` on a laptop wants.

Per key: a token-bucket rate limit (429 + Retry-After) and a cap on concurrent audio streams.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import secrets
import threading
import time
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from pathlib import Path

from serve_app.errors import ApiError

TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
LOCAL_TENANT = ""  # keyless loopback use: voices made then are public


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant, whether it may administer, and which key (for limits)."""

    tenant: str
    admin: bool
    key_id: str

    def can_see(self, owner: str) -> bool:
        """Own voices, public ones (owner "": the demo voice, voices made before auth was on), and
        every voice for an admin."""
        return self.admin or owner in ("", self.tenant)


@dataclass(frozen=True)
class KeyRecord:
    key_id: str  # the first 8 hex chars of the hash: names the key in logs, never enough to use it
    sha256: str
    tenant: str
    admin: bool
    created_at: float


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    def __init__(self, data_dir: str | Path):
        self.path = Path(data_dir) / "api_keys.json"
        self._lock = threading.Lock()
        self._mtime: int | None = None
        self._by_hash: dict[str, KeyRecord] = {}

    def _load(self) -> dict[str, KeyRecord]:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return {}
        if mtime != self._mtime:
            records = [KeyRecord(**r) for r in json.loads(self.path.read_text("utf-8"))["keys"]]
            self._by_hash, self._mtime = {r.sha256: r for r in records}, mtime
        return self._by_hash

    def empty(self) -> bool:
        return not self._load()

    def lookup(self, key: str) -> KeyRecord | None:
        digest = hash_key(key)
        for known, record in self._load().items():  # constant-time compare against each
            if hmac.compare_digest(known, digest):
                return record
        return None

    def create(self, tenant: str, admin: bool = False) -> tuple[str, KeyRecord]:
        """A new key for `tenant`. Returns the key itself (shown once) and its record."""
        if not TENANT_RE.match(tenant):
            raise ValueError(f"invalid tenant name {tenant!r}")
        key = "gsv_" + secrets.token_urlsafe(32)
        digest = hash_key(key)
        record = KeyRecord(digest[:8], digest, tenant, admin, time.time())
        with self._lock:
            records = list(self._load().values()) + [record]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".tmp-{os.getpid()}")
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"keys": [asdict(r) for r in records]}, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        return key, record


class TokenBucket:
    """`rate` requests per second with bursts of `burst`, per key (in this ingress replica)."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.state: dict[str, tuple[float, float]] = {}  # key id -> (tokens, last refill)

    def take(self, key_id: str) -> float:
        """0 if allowed now, else the seconds until a request would be."""
        now = time.monotonic()
        tokens, last = self.state.get(key_id, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens >= 1:
            self.state[key_id] = (tokens - 1, now)
            return 0.0
        self.state[key_id] = (tokens, now)
        return (1 - tokens) / self.rate


class Authenticator:
    def __init__(self, keys: KeyStore, required: bool, admin_key: str = "", rate_per_s: float = 0.0,
                 burst: int = 20, max_streams: int = 0):
        self.keys, self.required, self.admin_key = keys, required, admin_key
        self.bucket = TokenBucket(rate_per_s, burst) if rate_per_s > 0 else None
        self.max_streams = max_streams
        self.streams: dict[str, int] = {}

    def authenticate(self, authorization: str | None) -> Principal:
        token = _bearer(authorization)
        is_admin_key = bool(token and self.admin_key and hmac.compare_digest(token.encode(), self.admin_key.encode()))
        if not self.required and self.keys.empty():
            # keyless loopback use: clients that always send some key (the openai SDK) still work;
            # with an admin key configured, only that key may administer
            return Principal(LOCAL_TENANT, is_admin_key or not self.admin_key, "local")
        if token is None:
            raise unauthorized("an API key is required (Authorization: Bearer ...)")
        if is_admin_key:
            return Principal(LOCAL_TENANT, True, "admin")
        record = self.keys.lookup(token)
        if record is None:
            raise unauthorized("the API key is not valid")
        return Principal(record.tenant, record.admin, record.key_id)

    def check_rate(self, principal: Principal) -> None:
        if self.bucket is None:
            return
        wait = self.bucket.take(principal.key_id)
        if wait > 0:
            raise ApiError(429, "rate_limited", "too many requests for this API key",
                           headers={"Retry-After": str(max(1, math.ceil(wait)))})

    def open_stream(self, principal: Principal) -> None:
        if self.max_streams and self.streams.get(principal.key_id, 0) >= self.max_streams:
            raise ApiError(429, "too_many_streams",
                           f"this API key already has {self.max_streams} streams open", headers={"Retry-After": "1"})
        self.streams[principal.key_id] = self.streams.get(principal.key_id, 0) + 1

    def close_stream(self, principal: Principal) -> None:
        self.streams[principal.key_id] = max(0, self.streams.get(principal.key_id, 0) - 1)


# who is calling, set per request by the ingress middleware (default: keyless local use)
current_principal: ContextVar[Principal] = ContextVar("gsv_principal", default=Principal(LOCAL_TENANT, True, "local"))


def visible(records):
    """The voices the current caller may see."""
    principal = current_principal.get()
    return [r for r in records if principal.can_see(r.tenant)]


def lookup_voice(store, key: str):
    """The voice `key` names for the current caller, or None (a `VoiceStore` record).

    By id: any voice the caller may see. By name: names are unique per tenant, so a name resolves
    in the caller's own namespace: their tenant's voice first, then a public one. That holds for
    admins too: an admin sees every tenant's voice (list, and by id) but a name never reaches into
    another tenant, where it could be ambiguous (two tenants may both own "alice")."""
    principal = current_principal.get()
    return store.get(key, principal.tenant, principal.can_see)


def voice_name_taken(store, name: str) -> bool:
    """Whether a voice the current caller creates may not be called `name` (409 voice_exists):
    the name is already used in the new voice's namespace (the caller's tenant's voices and the
    public ones; every voice, for a public voice). Only voices the caller may see count, so the
    answer never reveals that another tenant owns a voice of that name."""
    principal = current_principal.get()
    return store.name_taken(name, principal.tenant, principal.can_see)


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def binds_beyond_loopback(host: str) -> bool:
    return host not in ("127.0.0.1", "localhost", "::1")
