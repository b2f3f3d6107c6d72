"""advguard serving: bundles, ONNX Runtime engine, guard, gRPC server, metrics. No torch here."""
