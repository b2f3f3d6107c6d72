"""The Open Inference Protocol v2 over HTTP/JSON (KServe's and Triton's REST API) on the same data
plane as the gRPC front ends: `server` (uvicorn on the server's loop), `app` (the ASGI shell:
routes, auth, limits, metrics), `inference` (the OIP handlers), `tensors` (JSON and binary
tensors), `status` (the one error table for HTTP)."""
