"""The native gRPC front end (issue 20 point 2), `advguard serve --front native`: C++ gRPC
(Debian's libgrpc++, `transport.cc`) serving the unary methods of `advguard.v1.GuardedClassifier`,
`inference.GRPCInferenceService` and `grpc.health.v1.Health` on one port, handing whole batches of
serialized calls to one Python thread that runs the same core as `advguard serve --front grpc`:
`serving.grpc.classify` and `serving.grpc.oip` (input checks, response building),
`serving.runtime` (the store, hot reload, the data plane), `serving.pipeline` (model and guard),
`serving.answer` (what an answer shows), `serving.metrics`. Nothing of the guard, the pipeline or
the answer rules is written twice; the C++ side is transport only (plus the bearer token, the
drain and the queue bound, checked before a message is read).

Modules: `server` (the lifecycle), `front` (batches in, replies out, per-call metrics), `methods`
(the method table), `inline` (the shared async input code run without an event loop), `build`
(compiles the extension). This process never imports grpcio (two gRPC cores in one address
space): see docs/design/native-front-end.md for what it measured, covers and still leaves out.

    advguard serve --front native --store model_store --default-model fmnist-guarded
"""
