"""The REST front end's HTTP server: uvicorn, on the gRPC server's own asyncio loop, serving the
bare ASGI app of `serving.rest.app` (`advguard serve --http-port`).

Why uvicorn: it runs on an existing loop (its `startup()` / `shutdown()` are public, so it needs
neither its own loop nor its signal handling, which `serve()` would install over ours); with
httptools (llhttp, in C) its per-request cost under a bare ASGI callable is among the lowest of
the maintained Python HTTP servers (no framework, no middleware); it is what KServe's and
MLServer's REST servers run on, so the peer benchmark compares like with like; and it serves
TLS from the same PEM files as gRPC. aiohttp was the other candidate: as maintained and also
loop-embeddable, but its request and response objects cost more per call than a bare ASGI
callable.

Example:
    rest = await RestServer.start(plane, metrics, settings)   # settings: serving.grpc.server.ServerSettings
    rest.port; rest.draining = True; await rest.stop(grace=30)
"""
from __future__ import annotations

import asyncio
import socket
import ssl
from typing import TYPE_CHECKING

import uvicorn

from serving.metrics import Metrics
from serving.rest.app import RestApp
from serving.rest.inference import RestInference
from serving.runtime.dataplane import DataPlane

if TYPE_CHECKING:
    from serving.grpc.settings import ServerSettings


def _bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A listening socket on host:port (0: any free port), shared with other processes' when
    `reuse_port` (SO_REUSEPORT: `--workers`); OSError names what failed. Made with
    proto IPPROTO_TCP, as asyncio's own are: asyncio sets TCP_NODELAY only on connections of such
    a socket, and without it a response's headers and body (two writes) wait out the client's
    delayed ACK (measured: 48 ms per call at concurrency 1)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as err:
        sock.close()
        raise OSError(err.errno, f"cannot listen for REST on {host}:{port}: {err.strerror}") from None
    return sock


class RestServer:
    def __init__(self, app: RestApp, server: uvicorn.Server, sock: socket.socket, tick: asyncio.Task) -> None:
        self.app, self.server, self.sock, self.tick = app, server, sock, tick
        self.port: int = sock.getsockname()[1]

    @classmethod
    async def start(cls, plane: DataPlane, metrics: Metrics, settings: ServerSettings) -> RestServer:
        """Listen on settings.host:settings.http_port with the server's token, TLS files and limits."""
        app = RestApp(RestInference(plane), metrics, settings.auth_token, settings.max_message_bytes,
                      settings.max_concurrent_rpcs)
        tls = settings.tls
        config = uvicorn.Config(
            app, loop="none", http="auto", ws="none", lifespan="off", interface="asgi3", log_config=None,
            access_log=False, server_header=False, timeout_graceful_shutdown=settings.grace_seconds,
            ssl_certfile=str(tls.cert) if tls else None, ssl_keyfile=str(tls.key) if tls else None,
            ssl_ca_certs=str(tls.client_ca) if tls and tls.client_ca else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if tls and tls.client_ca else ssl.CERT_NONE)
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)  # "off": what Server.serve() would set up
        sock = _bind(settings.host, settings.http_port, settings.reuse_port)
        await server.startup(sockets=[sock])
        tick = asyncio.get_running_loop().create_task(server.main_loop())  # the Date header, once a second
        return cls(app, server, sock, tick)

    @property
    def draining(self) -> bool:
        return self.app.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        """New calls but health get 503 and readiness goes false (SIGTERM)."""
        self.app.draining = value
        self.app.handlers.ready = not value

    async def stop(self, grace: float | None = None) -> None:
        """Close the port, let accepted calls finish (up to `grace` seconds), close connections."""
        self.draining = True
        if grace is not None:
            self.server.config.timeout_graceful_shutdown = grace
        self.server.should_exit = True
        await self.tick
        await self.server.shutdown(sockets=[self.sock])
