"""One SSH connection per worker, opened on first use and kept.

A fresh `ssh` per request costs ~200 ms and trips sshd's `MaxStartups` under load; a kept
connection costs nothing per request. Each worker's connection is opened lazily (one
attempt at a time, shared by every caller waiting for it), kept alive with SSH
keepalives, and reopened after a drop; failed attempts back off exponentially so a dead
worker costs its callers a fast error, not a connect timeout each.

Host keys are always checked against the host's known_hosts file (plain, hashed and
`@cert-authority` lines; `@revoked` too). A key that is unknown and a key that changed
are different errors, and neither ever gets as far as authentication. The client key is
the only credential offered: no agent, no ~/.ssh/config, no passwords.

A big fleet is reached without flooding anything: at most `max_connecting` handshakes
are in progress at once (the others wait their turn, not counted against their connect
timeout), and a connection with no request for `idle_timeout` seconds is closed, so
hundreds of workers searched once an hour are not hundreds of SSH connections (and
sshd + gate processes on the workers) held for ever.

Connections are keyed by host name today; per-user certificates (docs/roadmap.md) will key
them by (host, identity) without changing callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncssh

from ..errors import UserError
from .bridge import MAX_IN_FLIGHT, BridgeSession
from .certs import CertPolicy, SignedKey
from .errors import (
    AuthRefused,
    ClientError,
    ConnectionLost,
    HostKeyChanged,
    HostKeyUnknown,
    KeyFileError,
    UnknownHost,
    Unreachable,
)
from .oneshot import start_oneshot
from .settings import Fleet, FleetSettings, HostConfig
from .stream import Stream

# AES-GCM first: with AES-NI it is ~100 µs per request cheaper than chacha20 in asyncssh.
CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)


@dataclass(frozen=True)
class PoolOptions:
    """Tuning shared by every host; per-host timeouts come from the config."""

    keepalive_interval: float = 15.0
    keepalive_count_max: int = 3
    backoff_min: float = 0.25
    backoff_max: float = 30.0
    # One-shot channels at once per connection: below sshd's default MaxSessions 10.
    max_sessions: int = 8
    max_in_flight: int = MAX_IN_FLIGHT
    ciphers: tuple[str, ...] = CIPHERS
    # SSH handshakes in progress at once over the whole pool (`[fleet] max_connecting`).
    max_connecting: int = FleetSettings.max_connecting
    # Close a connection after this many seconds without a request; 0 keeps it.
    idle_timeout: float = FleetSettings.idle_timeout
    # Per-person short-lived certificates (`[ssh] certificates`): connections are then
    # keyed by (host, person), each signed for that person (client/certs.py).
    certs: CertPolicy | None = None
    max_user_connections: int = 256

    @classmethod
    def for_fleet(cls, fleet: FleetSettings, **overrides: Any) -> PoolOptions:
        """The defaults, with the `[fleet]` settings of the config."""
        values: dict[str, Any] = {
            "max_connecting": fleet.max_connecting,
            "idle_timeout": fleet.idle_timeout,
        }
        values.update(overrides)
        return cls(**values)


class Handshakes:
    """The pool's bound on SSH handshakes in progress at once (`max_connecting`).

    Key exchange and authentication are the expensive part of a connection for both ends;
    128 at once would also trip each sshd's `MaxStartups` if many hosts share one sshd
    (a bastion, a test box). `now` and `peak` are for /metrics and the tests.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.now = 0
        self.peak = 0
        self._sem = asyncio.Semaphore(limit)

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        async with self._sem:
            self.now += 1
            self.peak = max(self.peak, self.now)
            try:
                yield
            finally:
                self.now -= 1


class _Client(asyncssh.SSHClient):
    def __init__(self, owner: HostConnection) -> None:
        self.owner = owner
        self.conn: asyncssh.SSHClientConnection | None = None

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self.conn = conn

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.owner._dropped(self.conn)


class HostConnection:
    """The connection (and bridge) to one worker."""

    def __init__(
        self,
        host: HostConfig,
        options: PoolOptions,
        handshakes: Handshakes | None = None,
        identity: str | None = None,
    ) -> None:
        self.host = host
        self.options = options
        self.identity = identity  # the person this connection is for (certificates)
        self.signed: SignedKey | None = None  # the certificate of the current connection
        self.renewals = 0  # connections replaced before their certificate expired
        self._retiring: set[asyncio.Task[None]] = set()
        self.fingerprint: str | None = None  # SHA256 of the host key last connected to
        self.connects = 0  # successful connects (a reconnect makes it 2)
        self.idle_closes = 0  # connections closed for being idle
        self._handshakes = handshakes or Handshakes(options.max_connecting)
        self._last_used = 0.0  # monotonic time of the last request started here
        self._oneshots = 0  # one-shot channels running
        self._idle_timer: asyncio.TimerHandle | None = None
        self._conn: asyncssh.SSHClientConnection | None = None
        self._bridge: BridgeSession | None = None
        self._lock = asyncio.Lock()
        self._bridge_lock = asyncio.Lock()
        self._sessions = asyncio.Semaphore(options.max_sessions)
        self._delay = 0.0
        self._retry_at = 0.0
        self._error: ClientError | None = None
        self._bridge_retry_at = 0.0
        self._bridge_error: ClientError | None = None

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def connected(self) -> bool:
        return self._conn is not None

    # ------------------------------------------------------------------ connection

    async def connection(self) -> asyncssh.SSHClientConnection:
        """The open connection, opening it if needed; raises the connect error."""
        self._maybe_renew()
        conn = self._conn
        if conn is not None:
            return conn
        async with self._lock:
            if self._conn is not None:
                return self._conn
            now = time.monotonic()
            if self._error is not None and now < self._retry_at:
                raise self._error.again(f"(next attempt in {self._retry_at - now:.1f} s)")
            try:
                async with self._handshakes.turn():  # waiting is not part of connect_timeout
                    conn = await self._connect()
            except ClientError as exc:
                opts = self.options
                self._delay = min(opts.backoff_max, max(opts.backoff_min, self._delay * 2))
                self._retry_at = time.monotonic() + self._delay
                self._error = exc
                raise
            self._delay = 0.0
            self._error = None
            self._conn = conn
            self.connects += 1
            key = conn.get_server_host_key()
            self.fingerprint = key.get_fingerprint("sha256") if key else None
            self._last_used = time.monotonic()
            self._arm_idle(self.options.idle_timeout)
            return conn

    async def _connect(self) -> asyncssh.SSHClientConnection:
        h = self.host
        if not h.known_hosts.is_file():
            raise HostKeyUnknown(
                h.name,
                f"known_hosts file {h.known_hosts} not found;"
                f" run `logtorukun hosts trust {h.name}` to create it",
            )
        opts = self.options
        client_keys: Any
        if opts.certs is not None:
            try:
                signed = await asyncio.to_thread(opts.certs.sign_for, h, self.identity)
            except UserError as exc:
                raise KeyFileError(h.name, f"cannot sign a certificate: {exc}") from None
            client_keys, self.signed = [(signed.key, signed.cert)], signed
        else:
            try:
                asyncssh.read_private_key(str(h.key))
            except (OSError, asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
                raise KeyFileError(h.name, f"cannot use client key {h.key}: {_why(exc)}") from None
            client_keys = [str(h.key)]
        where = f"{h.user}@{h.address}:{h.port}"
        try:
            async with asyncio.timeout(h.connect_timeout):
                return await asyncssh.connect(
                    h.address,
                    h.port,
                    username=h.user,
                    client_keys=client_keys,
                    known_hosts=str(h.known_hosts),  # never None: strict, always
                    config=None,
                    agent_path=None,
                    agent_forwarding=False,
                    x509_trusted_certs=None,
                    password_auth=False,
                    kbdint_auth=False,
                    host_based_auth=False,
                    gss_auth=False,
                    gss_kex=False,
                    preferred_auth="publickey",
                    encryption_algs=list(opts.ciphers),
                    connect_timeout=h.connect_timeout,
                    login_timeout=h.connect_timeout,
                    keepalive_interval=opts.keepalive_interval,
                    keepalive_count_max=opts.keepalive_count_max,
                    client_factory=lambda: _Client(self),
                )
        except asyncssh.HostKeyNotVerifiable:
            raise self._host_key_error() from None
        except asyncssh.PermissionDenied:
            if self.signed is not None:
                s = self.signed
                raise AuthRefused(
                    h.name,
                    f"{where} refused certificate serial {s.serial} (key id {s.key_id}):"
                    " is the user CA in TrustedUserCAKeys, the principals line's command="
                    " equal to gate_command, source_address right, the clock in sync, and"
                    " the serial or user not revoked? sshd's log on the worker says which",
                ) from None
            raise AuthRefused(
                h.name,
                f"authentication refused for {where} with key {h.key}"
                " (is it in the worker's authorized_keys, and does from= allow this address?)",
            ) from None
        except asyncssh.KeyExchangeFailed as exc:
            if self._known_entries():
                raise self._host_key_error(f" ({exc.reason})") from None
            raise Unreachable(h.name, f"key exchange with {where} failed: {exc.reason}") from None
        except asyncssh.DisconnectError as exc:
            raise Unreachable(h.name, f"{where} closed the connection: {exc.reason}") from None
        except TimeoutError:
            raise Unreachable(
                h.name, f"no SSH connection to {where} within {h.connect_timeout:g} s"
            ) from None
        except OSError as exc:
            raise Unreachable(h.name, f"cannot connect to {where}: {_why(exc)}") from None

    def _known_entries(self) -> int:
        """How many keys or CAs known_hosts trusts for this host (0: never trusted)."""
        h = self.host
        try:
            known = asyncssh.read_known_hosts(str(h.known_hosts))
        except (OSError, ValueError):
            return 0
        keys, cas, *_ = known.match(h.address, h.address, h.port)
        return len(keys) + len(cas)

    def _host_key_error(self, detail: str = "") -> ClientError:
        h = self.host
        if self._known_entries():
            return HostKeyChanged(
                h.name,
                f"HOST KEY CHANGED: {h.address}:{h.port} offered a key that {h.known_hosts}"
                f" does not trust{detail}; not connecting (possible man-in-the-middle)."
                f" If the change is expected, remove the old entry and run"
                f" `logtorukun hosts trust {h.name}`",
            )
        return HostKeyUnknown(
            h.name,
            f"host key of {h.address}:{h.port} is not in {h.known_hosts};"
            f" check it and run `logtorukun hosts trust {h.name}`",
        )

    def _dropped(self, conn: asyncssh.SSHClientConnection) -> None:
        """The connection closed: the next request reconnects at once (no backoff yet)."""
        if self._conn is not conn:  # an old one (closed when idle): not today's bridge
            return
        self._conn = None
        self._delay = 0.0
        bridge = self._bridge
        if bridge is not None and not bridge.closed:
            bridge.lost(ConnectionResetError("the SSH connection dropped"))

    # ------------------------------------------------------------------ idle close

    def _busy(self) -> bool:
        b = self._bridge
        return (
            self._oneshots > 0
            or self._bridge_lock.locked()
            or (b is not None and not b.closed and b.in_flight > 0)
        )

    def _arm_idle(self, delay: float) -> None:
        if self.options.idle_timeout <= 0:
            return
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = asyncio.get_running_loop().call_later(delay, self._idle_check)

    def _idle_check(self) -> None:
        """Close the connection if nothing ran on it for `idle_timeout`; else look again."""
        self._idle_timer = None
        conn = self._conn
        if conn is None:
            return
        limit = self.options.idle_timeout
        if self._busy():  # a follow may run for hours: look again after a full period
            self._arm_idle(limit)
            return
        b = self._bridge
        last = max(self._last_used, b.last_active if b is not None else 0.0)
        left = last + limit - time.monotonic()
        if left > 0:
            self._arm_idle(left)
            return
        self.idle_closes += 1
        bridge, self._bridge, self._conn = self._bridge, None, None
        if bridge is not None:
            bridge.close()
        conn.close()  # the next request connects again, at once (no backoff)

    # ------------------------------------------------------------------ requests

    def _maybe_renew(self) -> None:
        """Near its certificate's end, set the connection aside for a fresh one.

        Requests already running (a follow may run for hours) stay on the old connection:
        sshd checks a certificate when it authenticates, not afterwards, so they are
        not cut; the old connection closes once nothing runs on it any more."""
        signed, conn = self.signed, self._conn
        certs = self.options.certs
        if signed is None or conn is None or certs is None:
            return
        if signed.expires_in() > certs.renew_before:
            return
        bridge, self._bridge, self._conn, self.signed = self._bridge, None, None, None
        self.renewals += 1
        task = asyncio.get_running_loop().create_task(self._retire(conn, bridge))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(
        self, conn: asyncssh.SSHClientConnection, bridge: BridgeSession | None
    ) -> None:
        while bridge is not None and not bridge.closed and bridge.in_flight > 0:
            await asyncio.sleep(1.0)
        if bridge is not None:
            bridge.close()
        conn.close()

    async def bridge(self) -> BridgeSession:
        """The running bridge on this connection, starting one if needed."""
        self._maybe_renew()
        b = self._bridge
        if b is not None and not b.closed:
            return b
        async with self._bridge_lock:
            b = self._bridge
            if b is not None and not b.closed:
                return b
            if self._bridge_error is not None and time.monotonic() < self._bridge_retry_at:
                raise self._bridge_error.again()
            conn = await self.connection()
            try:
                b = await BridgeSession.open(
                    conn,
                    self.name,
                    timeout=self.host.connect_timeout,
                    max_in_flight=self.options.max_in_flight,
                )
            except ClientError as exc:
                self._bridge_error = exc
                self._bridge_retry_at = time.monotonic() + self.options.backoff_min
                raise
            except (asyncssh.Error, OSError) as exc:
                raise ConnectionLost(self.name, f"cannot start the bridge: {_why(exc)}") from None
            self._bridge_error = None
            self._bridge = b
            return b

    async def start(
        self,
        command: str,
        via: dict[str, Any] | None = None,
        *,
        oneshot: bool = False,
        positions: bool = False,
    ) -> Stream:
        """Send `command` to the gate; the stream yields its output."""
        self._last_used = time.monotonic()
        if not oneshot:
            bridge = await self.bridge()
            return await bridge.start(command, via, positions=positions)
        if positions:
            raise ValueError("positions need the bridge: a one-shot command has no frames")
        if via:
            raise ValueError("`via` needs the bridge: a one-shot command has nowhere to carry it")
        conn = await self.connection()
        await self._sessions.acquire()
        self._oneshots += 1
        try:
            return await start_oneshot(conn, self.name, command, self._oneshot_ended)
        except (asyncssh.Error, OSError) as exc:
            raise ConnectionLost(self.name, f"cannot open a session: {_why(exc)}") from None

    def _oneshot_ended(self) -> None:
        self._oneshots -= 1
        self._last_used = time.monotonic()
        self._sessions.release()

    async def close(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        for task in list(self._retiring):
            task.cancel()
        bridge, self._bridge = self._bridge, None
        if bridge is not None:
            bridge.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            await conn.wait_closed()


class Pool:
    """Connections to the configured workers; `async with Pool(config) as pool:`."""

    def __init__(
        self,
        hosts: Fleet | Sequence[HostConfig],
        options: PoolOptions | None = None,
        *,
        identity: str | None = None,
    ) -> None:
        self.hosts = list(hosts if isinstance(hosts, Sequence) else hosts.hosts)
        if options is None:
            fleet = FleetSettings() if isinstance(hosts, Sequence) else hosts.fleet
            extra: dict[str, Any] = {}
            # A loaded config may say [ssh] certificates (duck-typed: the client does not
            # know the config's schema).
            ssh = None if isinstance(hosts, Sequence) else getattr(hosts, "ssh", None)
            if ssh is not None and ssh.certificates:
                # A terminal read: every connection is signed for the person running it.
                extra["certs"] = CertPolicy.from_settings(ssh, identity)
            options = PoolOptions.for_fleet(fleet, **extra)
        self.options = options
        self._conns: dict[tuple[str, str | None], HostConnection] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.handshakes = Handshakes(options.max_connecting)

    def get(self, name: str, identity: str | None = None) -> HostConnection:
        """The (lazily connected) worker `name`, for `identity` when certificates are on;
        UnknownHost if it is not configured."""
        if self.options.certs is None:
            identity = None
        key = (name, identity)
        hc = self._conns.pop(key, None)
        if hc is None:
            host = next((h for h in self.hosts if h.name == name), None)
            if host is None:
                known = ", ".join(h.name for h in self.hosts) or "none configured"
                raise UnknownHost("", f"unknown host {name!r} (configured: {known})")
            hc = HostConnection(host, self.options, self.handshakes, identity)
            self._evict()
        self._conns[key] = hc  # most recently used last
        return hc

    def _evict(self) -> None:
        """Per-person connections are bounded: close the least recently used idle ones."""
        if self.options.certs is None:
            return
        people = sum(1 for _, who in self._conns if who is not None)
        excess = people + 1 - self.options.max_user_connections
        for key, hc in list(self._conns.items()):
            if excess <= 0:
                break
            if key[1] is not None and not hc._busy():
                del self._conns[key]
                task = asyncio.get_running_loop().create_task(hc.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
                excess -= 1

    async def start(
        self,
        host: str,
        command: str,
        via: dict[str, Any] | None = None,
        *,
        oneshot: bool = False,
        positions: bool = False,
    ) -> Stream:
        identity = via.get("user") if via else None
        return await self.get(host, identity).start(
            command, via, oneshot=oneshot, positions=positions
        )

    @property
    def connected(self) -> int:
        """Open connections right now (a fleet's idle ones close after `idle_timeout`)."""
        return sum(1 for c in self._conns.values() if c.connected)

    async def close(self) -> None:
        conns = list(self._conns.values())
        self._conns.clear()
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _why(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is sshd running on that port?)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the address ({exc.strerror or exc})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
