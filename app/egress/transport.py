"""An httpx client whose every connection passes the egress policy (DESIGN §9.1).

The network backend below is what httpcore calls to open a TCP connection: it resolves the
host ONCE, keeps only the addresses the policy allows, and connects to that address itself.
The URL (and with it the Host header and the TLS SNI/certificate check, which httpcore derives
from the request's origin, not from the socket) is untouched. So a DNS answer that changes
between a check and the connect (rebinding) cannot matter: there is no second lookup.

No proxies from the environment (`trust_env=False`: HTTP(S)_PROXY would bypass the check) and
no redirects (a public server could redirect to 169.254.169.254).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import typing

import anyio
import httpcore
import httpx

from app.egress.policy import EgressPolicy, IPAddress


class EgressDenied(httpx.TransportError):
    """The call would connect to an address the egress policy does not allow."""


def denial_message(host: str, port: int) -> str:
    # Never name the resolved address nor anything learnt by connecting: the same words whether
    # or not something listens there, and no window into internal DNS.
    shown = f"[{host}]" if ":" in host else host
    return (
        f"egress to {shown}:{port} is not allowed: it does not resolve to a public address "
        f"(an operator can open it with MESHHOOK_EGRESS_ALLOW)"
    )


class EgressNetworkBackend(httpcore.AsyncNetworkBackend):
    """Resolve once, check the addresses, connect to an allowed one (never to the name)."""

    def __init__(self, policy: EgressPolicy):
        self.policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every allowed address of `host`; EgressDenied when there is none."""
        try:
            literal: IPAddress | None = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            found: list[IPAddress] = [literal]
        else:
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError) as exc:
                raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
            found = []
            for info in infos:
                addr = ipaddress.ip_address(str(info[4][0]).split("%")[0])
                if addr not in found:
                    found.append(addr)
        allowed = [a for a in found if self.policy.allows(host, a, port)]
        if not allowed:
            raise EgressDenied(denial_message(host, port))
        return allowed

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout):  # raises on leaving the block, hence the outer try
                addresses = await self.resolve(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise EgressDenied("unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class EgressTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport, with its connection pool built on the egress backend."""

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        limits: httpx.Limits = httpx.Limits(),
        http2: bool = False,
        verify: typing.Any = True,
    ):
        # Not super().__init__(): that would build a pool on the default backend first. The base
        # class only ever uses `self._pool` (httpx 0.28).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=http2,
            network_backend=EgressNetworkBackend(policy),
        )


def egress_client(
    policy: EgressPolicy,
    *,
    limits: httpx.Limits = httpx.Limits(),
    verify: typing.Any = True,
    **httpx_kwargs: typing.Any,
) -> httpx.AsyncClient:
    """An AsyncClient for tenant calls: policy-checked connects, no env proxies, no redirects."""
    httpx_kwargs.pop("follow_redirects", None)
    httpx_kwargs.pop("trust_env", None)
    return httpx.AsyncClient(
        transport=EgressTransport(policy, limits=limits, verify=verify),
        trust_env=False,
        follow_redirects=False,
        **httpx_kwargs,
    )
