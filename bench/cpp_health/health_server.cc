// A C++ gRPC server answering grpc.health.v1.Health/Check and nothing else: the transport floor
// of a non-Python gRPC server on this machine, for bench/transport_floor.py. Prints its port.
#include <cstdio>

#include <grpcpp/grpcpp.h>

#include "health.grpc.pb.h"

using grpc::health::v1::Health;
using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

class AlwaysServing final : public Health::Service {
  grpc::Status Check(grpc::ServerContext*, const HealthCheckRequest*, HealthCheckResponse* response) override {
    response->set_status(HealthCheckResponse::SERVING);
    return grpc::Status::OK;
  }
};

int main() {
  AlwaysServing service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  auto server = builder.BuildAndStart();
  if (!server || port == 0) return 1;
  std::printf("%d\n", port);
  std::fflush(stdout);
  server->Wait();
}
