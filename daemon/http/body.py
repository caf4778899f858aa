"""Reading a request's body within the configured size, on the event loop."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from starlette.exceptions import HTTPException

__all__ = ["parse_json", "read_body", "read_json"]


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body's bytes; 413 past ``max_bytes`` (api.max_request_bytes)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise HTTPException(413, f"request body larger than {max_bytes} bytes "
                                "(api.max_request_bytes)")
    return bytes(body)


def parse_json(body: bytes) -> Any:
    """The parsed JSON of ``body``; 400 when it is not UTF-8 or not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise HTTPException(400, f"body is not UTF-8 (byte {bad.start})") from exc
        raise HTTPException(400, f"body is not valid JSON: {exc}") from exc


async def read_json(request: Request, max_bytes: int) -> Any:
    """The parsed body; 413 past ``max_bytes`` (api.max_request_bytes), 400 when not JSON."""
    return parse_json(await read_body(request, max_bytes))
