"""Request bodies: read within the limits (size, time), and parsed into arrays with
their types and counts checked before anything big is allocated."""

from __future__ import annotations

import asyncio
import io
import json
import math
from typing import Any

import numpy as np
import orjson
from fastapi import Request
from starlette.requests import ClientDisconnect

from lepton.serving.core import BadRequest, ClientGone
from lepton_core.params import ServeParams

JSON_TYPES = ("application/json",)
NPY_TYPES = ("application/x-npy", "application/octet-stream")


def _read_npy(body: bytes) -> np.ndarray:
    """A .npy body -> array. The header's shape is checked against the bytes that
    follow it before anything is allocated (np.load allocates what the header
    declares), and object arrays are refused."""
    from numpy.lib import format as npy

    f = io.BytesIO(body)
    try:
        version = npy.read_magic(f)
        shape, fortran, dtype = (npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0)(f)
    except Exception as e:  # noqa: BLE001 - ValueError, EOFError, tokenize's and ast's errors: all the client's
        why = str(e).splitlines()[0][:200] if str(e).strip() else e.__class__.__name__
        raise BadRequest(400, f"not a .npy array ({why})") from None
    if dtype.hasobject:
        raise BadRequest(400, "not a .npy array of numbers (object arrays are refused)")
    shown = str(tuple(shape)) if len(str(tuple(shape))) <= 80 else str(tuple(shape))[:80] + "...)"
    if len(shape) > 32 or any(d < 0 for d in shape) or dtype.itemsize == 0:
        raise BadRequest(400, f".npy header declares shape {shown} of {dtype}: not an array this server reads")
    count = math.prod(shape)  # Python ints: a shape whose product overflows int64 cannot wrap round to fit
    data = memoryview(body)[f.tell() :]
    if count * dtype.itemsize != len(data):
        raise BadRequest(
            400, f".npy header declares shape {shown} ({count * dtype.itemsize} bytes) but the body holds {len(data)}"
        )
    x = np.frombuffer(data, dtype=dtype, count=count)
    return x.reshape(shape, order="F" if fortran else "C")


def loads_json(body: bytes | memoryview) -> Any:
    """A JSON body as Python's json module reads it (NaN and Infinity, which clients
    written in Python send, included), parsed by orjson when it can (a small body several
    times faster); a malformed one is a 400 with the json module's reason."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:  # malformed, or what only Python's JSON takes: its verdict
        pass
    try:
        return json.loads(bytes(body))
    except RecursionError:
        raise BadRequest(400, "malformed JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(400, f"malformed JSON: {str(e).splitlines()[0]}") from None


_NUMBERS = frozenset((int, float))
_JSON_NAMES = {str: "strings", bool: "true/false", type(None): "null", dict: "objects"}


def instances_array(instances: list, max_instances: int) -> np.ndarray:
    """JSON instances -> an array, their count and types checked before numpy allocates:
    a rectangular nest of lists of numbers. (np.asarray of strings makes a fixed-width
    string array, count x the longest string, before any check could refuse it; here the
    memory used is a list of pointers per level, bounded by the body.)"""
    if len(instances) > max_instances:
        raise BadRequest(413, f"{len(instances)} instances is over the limit of {max_instances}")
    shape, first = [], instances
    while type(first) is list:  # the shape, from the first element of each level
        shape.append(len(first))
        if len(shape) > 32:
            raise BadRequest(400, "instances nested over 32 levels deep")
        if not first:
            break
        first = first[0]
    level: list = [instances]
    for size in shape:
        below: list = []
        for row in level:
            if type(row) is not list or len(row) != size:
                raise BadRequest(400, "instances are ragged (samples of different shapes)")
            below.extend(row)
        level = below
    kinds = {type(v) for v in level}
    if not kinds <= _NUMBERS:
        odd = next(iter(kinds - _NUMBERS))
        if odd is list:
            raise BadRequest(400, "instances are ragged (samples of different shapes)")
        raise BadRequest(400, f"instances hold {_JSON_NAMES.get(odd, odd.__name__)}: send numbers")
    return np.array(level).reshape(shape)


BIG_BODY = 64 * 1024  # bytes: a body this big is parsed on a worker thread, off the event loop
_CLOSE = {"Connection": "close"}  # a refused body's rest is not read: the connection cannot carry another request


def _arrived(request: Request) -> bool:
    """Whether uvicorn has read the request's whole body already (its connection's
    request cycle holds the last byte, and its receive() answers without waiting), as it
    has for almost every small request: a timer and a stream for it would cost more than
    the rest of reading it. False for any other ASGI server."""
    cycle = getattr(request.receive, "__self__", None)
    event = getattr(cycle, "message_event", None)
    return (
        isinstance(event, asyncio.Event)
        and event.is_set()
        and getattr(cycle, "more_body", True) is False
        and getattr(cycle, "disconnected", True) is False
        and getattr(cycle, "waiting_for_100_continue", True) is False
    )


async def read_body(request: Request, params: ServeParams) -> bytes:
    """A request's body, refused before it is whole when it is over `serve.max_body_mb`:
    at once from its Content-Length, else (chunked) as soon as the bytes read pass the cap
    (413); and when it has not all arrived within `serve.body_timeout_s` (408). At most
    the cap is ever held. A client that leaves meanwhile raises `ClientGone`. Every route
    that reads a body reads it here."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):  # gzip, deflate...: the server does not inflate request bodies
        raise BadRequest(415, f"Content-Encoding {encoding!r} on requests is not supported: send the body uncompressed")
    cap = int(params.max_body_mb * 1024 * 1024)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise BadRequest(413, f"body of {declared} bytes is over the {params.max_body_mb:g} MB cap", _CLOSE)
    if _arrived(request):  # no wait, so no timer: taken as it is
        message = await request.receive()
        if message["type"] != "http.request":
            raise ClientGone
        body: bytes = message["body"]
        if len(body) > cap:
            raise BadRequest(413, f"body over the {params.max_body_mb:g} MB cap", _CLOSE)
        return body
    chunks, size = [], 0
    try:
        async with asyncio.timeout(params.body_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > cap:
                    raise BadRequest(413, f"body over the {params.max_body_mb:g} MB cap", _CLOSE)
                chunks.append(chunk)
    except TimeoutError:
        limit = f"{params.body_timeout_s:g} s (serve.body_timeout_s)"
        raise BadRequest(408, f"the body took over {limit} to arrive", _CLOSE) from None
    except ClientDisconnect:
        raise ClientGone from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
