"""gRPC credentials from this workload's SVID: the one place servers and clients get them.

`WorkloadIdentity.from_settings(settings)` is this workload's identity. A server binds with
`identity.add_port(server, address)`: mTLS that requires a client certificate chaining to the
trust bundle, whose SVID and bundle are re-read on every new handshake when the files changed
(`grpc.dynamic_ssl_server_credentials`). A client opens `identity.channel(target,
server="pql")`: mTLS with our SVID, verifying that the server holds the TLS name of `pql`
(`pql.<namespace>.svc`, ADR 0041); when our SVID rotates, the next call opens a new channel
and the old one is closed after its in-flight calls finish. In plaintext-dev mode both sides
speak plaintext and only on loopback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import grpc

from mc_common.identity.ids import SCHEME, IdentityError, server_name
from mc_common.identity.settings import IdentitySettings, is_loopback
from mc_common.identity.source import SvidMaterial, SvidSource

log = logging.getLogger("mc.identity")

ChannelOptions = Sequence[tuple[str, Any]]


def server_credentials(source: SvidSource) -> grpc.ServerCredentials:
    """mTLS server credentials that follow `source`: a changed SVID or bundle is served from
    the next handshake on, without a restart; connections already open keep theirs."""
    served = source.current

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        nonlocal served
        try:
            source.refresh()
        except Exception:  # never let a file problem break the handshake path
            log.exception("SVID refresh failed")
            return None
        if source.current is served:
            return None
        served = source.current
        return _server_configuration(served)

    return grpc.dynamic_ssl_server_credentials(
        _server_configuration(served),
        fetch,  # type: ignore[arg-type]  # None (no change) is documented; the stubs omit it
        require_client_authentication=True,
    )


def _server_configuration(material: SvidMaterial) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(material.key_pem, material.cert_chain_pem)], root_certificates=material.bundle_pem
    )


def channel_credentials(material: SvidMaterial) -> grpc.ChannelCredentials:
    """Client credentials: present our SVID, trust only the bundle."""
    return grpc.ssl_channel_credentials(
        root_certificates=material.bundle_pem,
        private_key=material.key_pem,
        certificate_chain=material.cert_chain_pem,
    )


class WorkloadIdentity:
    """This workload's identity: an SVID source under mTLS, nothing in plaintext-dev mode."""

    def __init__(self, settings: IdentitySettings, source: SvidSource | None) -> None:
        if source is None and settings.mode != "plaintext-dev":
            raise IdentityError("mTLS needs an SVID source")
        self.settings = settings
        self.source = source

    @classmethod
    def from_settings(cls, settings: IdentitySettings) -> WorkloadIdentity:
        """Load the SVID the settings point at (IdentityError when it is missing or unusable)."""
        if settings.mode == "plaintext-dev":
            return cls(settings, None)
        chain, key, bundle = settings.svid_paths()
        source = SvidSource(
            chain, key, bundle, settings.trust_domain, interval_s=settings.reload_interval_s
        )
        return cls(settings, source)

    @property
    def plaintext(self) -> bool:
        return self.source is None

    @property
    def spiffe_id(self) -> str | None:
        """Our own SPIFFE ID (None in plaintext-dev mode)."""
        return None if self.source is None else self.source.spiffe_id

    def add_port(self, server: grpc.aio.Server, address: str) -> int:
        """Bind `address` with mTLS (plaintext only in dev mode, and only on loopback)."""
        if self.source is None:
            host = address.rsplit(":", 1)[0]
            if not is_loopback(host):
                raise IdentityError(
                    f"plaintext-dev mode serves loopback addresses only, not {address}"
                )
            log.warning("serving PLAINTEXT (plaintext-dev mode)", extra={"address": address})
            return server.add_insecure_port(address)
        return server.add_secure_port(address, server_credentials(self.source))

    def server_name(self, server: str) -> str:
        """The TLS name a server must hold: from a service name or its SPIFFE ID."""
        spiffe_id = server if server.startswith(SCHEME) else self.settings.id_of(server)
        return server_name(spiffe_id)

    def channel(
        self,
        target: str,
        *,
        server: str,
        options: ChannelOptions = (),
        interceptors: Sequence[Any] = (),
    ) -> grpc.aio.Channel:
        """An asyncio channel to `target`, which must prove it is `server` (a service name or
        SPIFFE ID); follows our SVID's rotation."""
        if self.source is None:
            _require_loopback_target(target)
            return grpc.aio.insecure_channel(
                target, options=list(options), interceptors=list(interceptors) or None
            )
        return RotatingChannel(  # type: ignore[return-value]  # quacks like grpc.aio.Channel
            target, self.source, self.server_name(server), options, interceptors
        )

    def sync_channel(
        self, target: str, *, server: str, options: ChannelOptions = ()
    ) -> grpc.Channel:
        """A blocking channel (for short-lived callers such as the CLI; no rotation)."""
        if self.source is None:
            _require_loopback_target(target)
            return grpc.insecure_channel(target, options=list(options))
        return grpc.secure_channel(
            target,
            channel_credentials(self.source.current),
            options=[("grpc.ssl_target_name_override", self.server_name(server)), *options],
        )


def _require_loopback_target(target: str) -> None:
    host = urlsplit(f"//{target.split('///')[-1]}").hostname or ""
    if not is_loopback(host):
        raise IdentityError(f"plaintext-dev mode calls loopback addresses only, not {target}")


class RotatingChannel:
    """A `grpc.aio.Channel` stand-in whose credentials follow an `SvidSource`.

    Stubs take their callables from it once; each call goes to the channel of the material
    current at that moment. On rotation a new channel is opened and the old one is closed
    with `grace_s`, so calls in flight on it finish.
    """

    def __init__(
        self,
        target: str,
        source: SvidSource,
        tls_name: str,
        options: ChannelOptions = (),
        interceptors: Sequence[Any] = (),
        *,
        grace_s: float = 30.0,
    ) -> None:
        self._target = target
        self._source = source
        self._options = [("grpc.ssl_target_name_override", tls_name), *options]
        self._interceptors = list(interceptors) or None
        self._grace = grace_s
        self._material = source.current
        self._channel = self._open(self._material)
        self._retiring: set[asyncio.Task[None]] = set()

    def _open(self, material: SvidMaterial) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(
            self._target,
            channel_credentials(material),
            options=self._options,
            interceptors=self._interceptors,
        )

    def current(self) -> grpc.aio.Channel:
        """The channel for the next call (rotating first if our SVID changed)."""
        self._source.refresh()
        material = self._source.current
        if material is not self._material:
            old, self._material = self._channel, material
            self._channel = self._open(material)
            task = asyncio.get_running_loop().create_task(old.close(self._grace))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
            log.info("client channel rotated", extra={"target": self._target})
        return self._channel

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _MultiCallable(
            self, "unary_unary", method, request_serializer, response_deserializer
        )

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _MultiCallable(
            self, "unary_stream", method, request_serializer, response_deserializer
        )

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _MultiCallable(
            self, "stream_unary", method, request_serializer, response_deserializer
        )

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _MultiCallable(
            self, "stream_stream", method, request_serializer, response_deserializer
        )

    async def channel_ready(self) -> None:
        await self.current().channel_ready()

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._channel.get_state(try_to_connect)

    async def close(self, grace: float | None = None) -> None:
        """Close the current channel and wait for retired ones to finish closing."""
        await self._channel.close(grace)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    async def __aenter__(self) -> RotatingChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close(None)


class _MultiCallable:
    """A stub's callable that resolves the current channel per call (cached per channel)."""

    __slots__ = ("_args", "_callable", "_channel", "_kind", "_owner")

    def __init__(self, owner: RotatingChannel, kind: str, method: str, *codecs: Any) -> None:
        self._owner = owner
        self._kind = kind
        self._args = (method, *codecs)
        self._channel: grpc.aio.Channel | None = None
        self._callable: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        channel = self._owner.current()
        if channel is not self._channel:
            self._callable = getattr(channel, self._kind)(*self._args, _registered_method=True)
            self._channel = channel
        return self._callable(*args, **kwargs)
