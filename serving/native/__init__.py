"""A native gRPC front end (prototype, issue 20 point 2): the Open Inference Protocol's
`ModelInfer` (unary, insecure, no auth) served by C++ gRPC (Debian's libgrpc++, `oip_front.cc`),
handing whole batches of serialized calls to one Python thread that runs the same core as
`advguard serve`: `serving.grpc.oip` (input checks, response building), `serving.pipeline`
(model and guard), `serving.answer` (what an answer shows). Nothing of the guard, the pipeline
or the answer rules is written twice; the C++ side is transport only.

This process never imports grpcio (two gRPC cores in one address space): see
docs/design/native-front-end.md for what it measured and what a full front end still needs.

    python -m serving.native --store model_store --default-model fmnist-guarded --port 50061
"""
