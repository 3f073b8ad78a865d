"""OpenAPI 3.1 placeholder (filled in below)."""

from __future__ import annotations

from typing import Any

from mc_gateway.descriptors import Api


def build(api: Api) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Maestro Conductor", "version": "v1"},
        "paths": {},
    }
