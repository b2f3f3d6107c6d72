"""The ASGI shell of the REST front end: routes a request to its handler (`serving.rest.inference`),
and around every call does what `serving.grpc.interceptors` does for gRPC: optional bearer-token
auth (health stays open for probes), UNAVAILABLE-alike 503 once the server drains, the call
limit, the body size limit, and the per-call metrics (latency by model, method and verdict;
calls by method and HTTP status; calls in flight). Method labels: `rest_live`, `rest_ready`,
`rest_server_metadata`, `rest_model_metadata`, `rest_model_ready`, `rest_infer`
(`rest_unrouted` for paths that are none of them).

A bare ASGI 3 callable, no framework: the per-call cost on top of the HTTP server is a path
split and a dict lookup.
"""
from __future__ import annotations

import hmac
import logging
import time

from serving.metrics import Metrics, set_call_labels
from serving.rest.inference import Reply, RestInference
from serving.rest.status import DRAINING, UNAUTHENTICATED, HTTPError, error_body, status_of

log = logging.getLogger(__name__)
HEADER_LENGTH = b"inference-header-content-length"


def _header(scope: dict, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def _read_body(scope: dict, receive, limit: int) -> bytes:
    length = _header(scope, b"content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise HTTPError(413, f"request body of {int(length)} bytes is over the {limit}-byte limit (--max-message-bytes)")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HTTPError(499, "client closed the connection before sending its request")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"request body is over the {limit}-byte limit (--max-message-bytes)")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class RestApp:
    """`token`: when set, every route but /v2/health/* needs `Authorization: Bearer <token>`
    (else 401); `max_body`: request bytes allowed (else 413); `max_calls`: calls handled at once
    (else 429; None: no limit). Set `draining` (SIGTERM) to answer new calls 503."""

    def __init__(self, handlers: RestInference, metrics: Metrics, token: str | None = None,
                 max_body: int = 64 * 1024 * 1024, max_calls: int | None = None) -> None:
        self.handlers, self.metrics = handlers, metrics
        self.token = f"Bearer {token}".encode() if token else None
        self.max_body, self.max_calls = max_body, max_calls
        self.draining = False
        self.calls = 0

    def _route(self, verb: str, path: str) -> tuple[str, bool, str, tuple]:
        """(metrics method name, open to all, the verb it takes, (handler kind, args))."""
        parts = path.strip("/").split("/")
        if parts[0] == "v2":
            if len(parts) == 1:
                return "rest_server_metadata", False, "GET", ("server_metadata",)
            if parts[1] == "health" and len(parts) == 3 and parts[2] in ("live", "ready"):
                return f"rest_{parts[2]}", True, "GET", (parts[2],)
            if parts[1] == "models" and len(parts) >= 3 and parts[2]:
                name, rest, version = parts[2], parts[3:], ""
                if len(rest) >= 2 and rest[0] == "versions":
                    version, rest = rest[1], rest[2:]
                if not rest:
                    return "rest_model_metadata", False, "GET", ("model_metadata", name, version)
                if rest == ["ready"]:
                    return "rest_model_ready", False, "GET", ("model_ready", name, version)
                if rest == ["infer"]:
                    return "rest_infer", False, "POST", ("infer", name, version)
        return "rest_unrouted", True, verb, ("unrouted", path)

    async def _handle(self, scope: dict, receive, target: tuple) -> Reply:
        kind, *args = target
        h = self.handlers
        if kind == "infer":
            body = await _read_body(scope, receive, self.max_body)
            length = _header(scope, HEADER_LENGTH)
            return await h.infer(*args, body, None if length is None else length.decode("latin-1"))
        if kind == "live":
            return h.live()
        if kind == "ready":
            return h.server_ready()
        if kind == "server_metadata":
            return h.server_metadata()
        if kind == "model_metadata":
            return h.model_metadata(*args)
        if kind == "model_ready":
            return h.model_ready(*args)
        raise HTTPError(404, f"no such route: {args[0]} (the API is OIP v2 under /v2)")

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] != "http":  # lifespan is off and websockets are not served
            return
        began = time.perf_counter()
        labels = set_call_labels()  # each request runs in its own task: its own context copy
        metrics = self.metrics
        method, open_route, verb, target = self._route(scope["method"], scope["path"])
        metrics.in_flight.inc()
        counted, reply = False, None
        try:
            try:
                if scope["method"] != verb:
                    raise HTTPError(405, f"{scope['path']} takes {verb}, not {scope['method']}")
                if not open_route:
                    if self.draining:
                        raise HTTPError(*DRAINING)
                    if self.token is not None and not hmac.compare_digest(
                            _header(scope, b"authorization") or b"", self.token):
                        raise HTTPError(*UNAUTHENTICATED)
                    if self.max_calls is not None and self.calls >= self.max_calls:
                        raise HTTPError(429, f"more than {self.max_calls} calls at once (--max-concurrent-rpcs)")
                    self.calls += 1
                    counted = True
                reply = await self._handle(scope, receive, target)
            except Exception as err:  # noqa: BLE001 - every error ends as an HTTP answer
                status = status_of(err)
                if status == 500:
                    log.exception("REST %s %s failed", scope["method"], scope["path"])
                reply = Reply(status, error_body(str(err) if status != 500 else f"internal error: {type(err).__name__}"))
            finally:
                if counted:
                    self.calls -= 1
            headers = [(b"content-type", reply.content_type), (b"content-length", b"%d" % len(reply.body))]
            if reply.header_length is not None:
                headers.append((HEADER_LENGTH, b"%d" % reply.header_length))
            if reply.status == 401:
                headers.append((b"www-authenticate", b"Bearer"))
            await send({"type": "http.response.start", "status": reply.status, "headers": headers})
            await send({"type": "http.response.body", "body": reply.body})
        finally:
            status = reply.status if reply is not None else 499
            metrics.in_flight.dec()
            metrics.requests.labels(method, str(status)).inc()
            verdict = labels.verdict if status == 200 else "error"
            metrics.latency.labels(labels.model, method, verdict).observe(time.perf_counter() - began)
