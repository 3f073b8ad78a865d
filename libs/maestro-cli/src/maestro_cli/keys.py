"""`maestro keys create|list|rotate|revoke`: API keys of the gateway (operator commands).

They call `mc.gateway.v1.ApiKeyService` on the gateway's gRPC port with the CLI's SVID as an
operator principal (`--operator`, default `$USER`). A new key's secret is printed once and
cannot be shown again. Exit codes: 0 ok, 1 refused (bad input, not found, wrong state), 2 the
gateway could not be reached or failed.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import json_format

from maestro_cli import paths
from maestro_cli.fleet import client_identity, read_endpoint
from mc.gateway.v1 import api_key_service_pb2 as pb
from mc.gateway.v1 import api_key_service_pb2_grpc as pb_grpc

EXIT_OK, EXIT_REFUSED, EXIT_ERROR = 0, 1, 2
_REFUSED = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
)


class _Failed(Exception):
    """A call failed; `code` is the exit code (the reason is already printed)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _exit_code(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except _Failed as failed:
            return failed.code

    return run


def add_commands(commands: Any) -> None:
    """Register `keys` and its subcommands on the top-level subparsers."""
    keys = commands.add_parser("keys", help="gateway API keys (operator)").add_subparsers(
        dest="keys_command", required=True
    )
    create = keys.add_parser("create", help="create a key; prints its secret once")
    _common(create)
    create.add_argument("--tenant", required=True, help="the tenant the key belongs to")
    create.add_argument("--principal", required=True, help="kind:name the key acts as")
    create.add_argument("--display-name", default="", help="a label shown in listings")
    create.set_defaults(func=_exit_code(_create))
    listing = keys.add_parser("list", help="list a tenant's keys (never their secrets)")
    _common(listing)
    listing.add_argument("--tenant", required=True, help="whose keys to list")
    listing.set_defaults(func=_exit_code(_list))
    rotate = keys.add_parser("rotate", help="create a successor; the old key works a while")
    _common(rotate)
    rotate.add_argument("--tenant", required=True, help="the tenant the key belongs to")
    rotate.add_argument("key_id", help="the key to rotate")
    rotate.add_argument("--overlap", type=int, default=0, help="seconds (default: one day)")
    rotate.set_defaults(func=_exit_code(_rotate))
    revoke = keys.add_parser("revoke", help="revoke a key now, on every gateway replica")
    _common(revoke)
    revoke.add_argument("--tenant", required=True, help="the tenant the key belongs to")
    revoke.add_argument("key_id", help="the key to revoke")
    revoke.set_defaults(func=_exit_code(_revoke))


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=os.environ.get("MC_GATEWAY_ADDRESS"),
        help="the gateway's gRPC address (env MC_GATEWAY_ADDRESS; default: the dev fleet's)",
    )
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("MC_DEV_DATA_DIR", "var/dev"),
        help="the dev fleet's directory, relative to the repository root (env MC_DEV_DATA_DIR)",
    )
    parser.add_argument("--operator", default=None, help="operator name (default: $USER)")
    parser.add_argument("--json", action="store_true", help="print the reply as JSON")


def _call(args: argparse.Namespace, method: str, request: Any) -> Any:
    data_dir = paths.data_dir(args.data_dir)
    address = args.address or read_endpoint(data_dir, "gateway") or "127.0.0.1:7310"
    operator = args.operator or getpass.getuser()
    metadata = (("x-mc-principal", f"operator:{operator}"),)
    with client_identity(data_dir).sync_channel(address, server="gateway") as channel:
        stub = pb_grpc.ApiKeyServiceStub(channel)
        return getattr(stub, method)(request, metadata=metadata, timeout=30)


def _run(args: argparse.Namespace, method: str, request: Any) -> Any:
    try:
        return _call(args, method, request)
    except grpc.RpcError as exc:
        code = exc.code()  # type: ignore[attr-defined]
        print(f"error: {code.name}: {exc.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        raise _Failed(EXIT_REFUSED if code in _REFUSED else EXIT_ERROR) from None


def _print_key(key: pb.ApiKey) -> None:
    state = pb.ApiKeyState.Name(key.state).removeprefix("API_KEY_STATE_").lower()
    expires = key.expire_time.ToJsonString() if key.HasField("expire_time") else "-"
    print(f"{key.key_id}  {state:9}  {key.principal:24}  expires {expires}  {key.display_name}")


def _emit(args: argparse.Namespace, reply: Any) -> None:
    if args.json:
        print(json_format.MessageToJson(reply))


def _create(args: argparse.Namespace) -> int:
    request = pb.CreateApiKeyRequest(
        parent=f"tenants/{args.tenant}", principal=args.principal, display_name=args.display_name
    )
    reply = _run(args, "CreateApiKey", request)
    if args.json:
        _emit(args, reply)
        return EXIT_OK
    _print_key(reply.api_key)
    print(f"secret (shown once, store it now): {reply.secret}")
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    token = ""
    while True:
        request = pb.ListApiKeysRequest(parent=f"tenants/{args.tenant}", page_token=token)
        reply = _run(args, "ListApiKeys", request)
        if args.json:
            _emit(args, reply)
        else:
            for key in reply.api_keys:
                _print_key(key)
        token = reply.next_page_token
        if not token:
            return EXIT_OK


def _rotate(args: argparse.Namespace) -> int:
    request = pb.RotateApiKeyRequest(
        name=f"tenants/{args.tenant}/keys/{args.key_id}", overlap_seconds=args.overlap
    )
    reply = _run(args, "RotateApiKey", request)
    if args.json:
        _emit(args, reply)
        return EXIT_OK
    _print_key(reply.previous)
    _print_key(reply.api_key)
    print(f"secret (shown once, store it now): {reply.secret}")
    return EXIT_OK


def _revoke(args: argparse.Namespace) -> int:
    request = pb.RevokeApiKeyRequest(name=f"tenants/{args.tenant}/keys/{args.key_id}")
    reply = _run(args, "RevokeApiKey", request)
    if args.json:
        _emit(args, reply)
    else:
        _print_key(reply.api_key)
    return EXIT_OK
