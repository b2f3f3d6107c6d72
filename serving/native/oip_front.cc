// _oip_front: a C++ gRPC transport for the Open Inference Protocol's ModelInfer, as a CPython
// extension module (serving/native). Transport only: it holds no policy. Calls arrive on gRPC's
// own threads (callback API, generic service: the request and response stay serialized bytes),
// wait in one queue, and a Python thread takes them a batch at a time (`take`, the GIL released
// while it waits) and hands back each call's serialized response or its status (`finish`).
// What a request means, the checks, the guard and the answers are Python's (serving.native.front
// on serving.pipeline and serving.grpc.oip). ServerLive and ServerReady are answered here (the
// server listens only once its bundles are loaded); every other method is UNIMPLEMENTED.
//
// Python API (one server per process):
//   start(address: str, max_message_bytes: int) -> port
//   take(max_calls, want, max_wait_us, gap_us, timeout_ms) -> [(handle, request bytes), ...]
//       waits up to timeout_ms for a first call; then, while fewer than `want` calls wait, up to
//       max_wait_us from the first and gap_us from the latest arrival; at most max_calls
//   finish([(handle, response bytes or None, code, message), ...])  every taken call, once; the
//       replies are started on gRPC by the module's own reply thread, not by the caller
//   stop(grace_seconds)  new and queued calls end UNAVAILABLE; in-flight ones get the grace
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>

namespace {

using Clock = std::chrono::steady_clock;

constexpr char kInfer[] = "/inference.GRPCInferenceService/ModelInfer";
constexpr char kLive[] = "/inference.GRPCInferenceService/ServerLive";
constexpr char kReady[] = "/inference.GRPCInferenceService/ServerReady";
constexpr char kTrue[] = "\x08\x01";  // ServerLiveResponse{live: true} = ServerReadyResponse{ready: true}
constexpr char kStopping[] = "the server is stopping";

class InferCall;

struct Queue {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<InferCall*> calls;
  Clock::time_point last_arrival;
  bool closing = false;
};

// Process-lifetime state, allocated once and never destroyed: no static destructor may run while
// gRPC's threads could still touch it, or destroy a joinable thread if Python exits without stop().
Queue& queue = *new Queue;
std::unique_ptr<grpc::Server>& server = *new std::unique_ptr<grpc::Server>;
std::unique_ptr<grpc::CallbackGenericService>& service = *new std::unique_ptr<grpc::CallbackGenericService>;

grpc::ByteBuffer Buffer(const char* data, size_t size) {
  grpc::Slice slice(data, size);  // copies
  return grpc::ByteBuffer(&slice, 1);
}

// One ModelInfer call: read its one message, queue it, answer when Python says.
class InferCall final : public grpc::ServerGenericBidiReactor {
 public:
  InferCall() { StartRead(&request_); }

  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the call carried no request message"));
      return;
    }
    bool closing;
    {
      std::lock_guard<std::mutex> lock(queue.mu);
      closing = queue.closing;
      if (!closing) {
        queue.calls.push_back(this);
        queue.last_arrival = Clock::now();
      }
    }
    if (closing) {
      Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, kStopping));
    } else {
      queue.cv.notify_one();
    }
  }

  void Answer(grpc::ByteBuffer response) {
    response_ = std::move(response);
    StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
  }

  void OnDone() override { delete this; }

  grpc::ByteBuffer request_;

 private:
  grpc::ByteBuffer response_;
};

// ServerLive / ServerReady: a constant answer.
class ConstantCall final : public grpc::ServerGenericBidiReactor {
 public:
  ConstantCall() : response_(Buffer(kTrue, 2)) { StartRead(&request_); }
  void OnReadDone(bool) override { StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK); }
  void OnDone() override { delete this; }

 private:
  grpc::ByteBuffer request_, response_;
};

class Unimplemented final : public grpc::ServerGenericBidiReactor {
 public:
  explicit Unimplemented(const std::string& method) {
    Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                        "method " + method + " is not served by the native front end (ModelInfer, ServerLive and "
                        "ServerReady only); use `advguard serve`"));
  }
  void OnDone() override { delete this; }
};

class Service final : public grpc::CallbackGenericService {
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* context) override {
    const std::string& method = context->method();
    if (method == kInfer) return new InferCall;
    if (method == kLive || method == kReady) return new ConstantCall;
    return new Unimplemented(method);
  }
};

struct Reply {
  InferCall* call;
  bool ok;
  grpc::ByteBuffer response;
  grpc::Status status;
};

// The replies Python hands over, started on gRPC by a thread of their own: starting a write can
// make the send system calls inline, and that is transport work the Python thread should not wait on.
struct Replier {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<Reply> replies;
  bool stopping = false;
  std::thread thread;

  void Run() {
    std::vector<Reply> batch;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [this] { return !replies.empty() || stopping; });
        if (replies.empty()) return;  // stopping, and every reply is sent
        batch.swap(replies);
      }
      for (Reply& reply : batch) {
        if (reply.ok) {
          reply.call->Answer(std::move(reply.response));
        } else {
          reply.call->Finish(reply.status);
        }
      }
      batch.clear();
    }
  }
};

Replier& replier = *new Replier;

PyObject* Start(PyObject*, PyObject* args) {
  const char* address;
  int max_message_bytes;
  if (!PyArg_ParseTuple(args, "si", &address, &max_message_bytes)) return nullptr;
  if (server) {
    PyErr_SetString(PyExc_RuntimeError, "the native front end is started already (one per process)");
    return nullptr;
  }
  int port = 0;
  Py_BEGIN_ALLOW_THREADS
  service = std::make_unique<Service>();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port);
  builder.RegisterCallbackGenericService(service.get());
  builder.SetMaxReceiveMessageSize(max_message_bytes);
  builder.SetMaxSendMessageSize(max_message_bytes);
  server = builder.BuildAndStart();
  if (server) replier.thread = std::thread([] { replier.Run(); });
  Py_END_ALLOW_THREADS
  if (!server || port == 0) {
    server.reset();
    PyErr_Format(PyExc_OSError, "cannot listen on %s (address in use, or not an address)", address);
    return nullptr;
  }
  return PyLong_FromLong(port);
}

PyObject* Take(PyObject*, PyObject* args) {
  Py_ssize_t max_calls, want;
  long max_wait_us, gap_us, timeout_ms;
  if (!PyArg_ParseTuple(args, "nnlll", &max_calls, &want, &max_wait_us, &gap_us, &timeout_ms)) return nullptr;
  std::vector<InferCall*> taken;
  Py_BEGIN_ALLOW_THREADS
  std::unique_lock<std::mutex> lock(queue.mu);
  if (queue.cv.wait_until(lock, Clock::now() + std::chrono::milliseconds(timeout_ms),
                          [] { return !queue.calls.empty() || queue.closing; }) &&
      !queue.calls.empty()) {
    const auto until = Clock::now() + std::chrono::microseconds(max_wait_us);
    while (static_cast<Py_ssize_t>(queue.calls.size()) < want && !queue.closing) {
      const auto next = std::min(until, queue.last_arrival + std::chrono::microseconds(gap_us));
      if (Clock::now() >= next) break;
      queue.cv.wait_until(lock, next);
    }
    while (!queue.calls.empty() && static_cast<Py_ssize_t>(taken.size()) < max_calls) {
      taken.push_back(queue.calls.front());
      queue.calls.pop_front();
    }
  }
  lock.unlock();
  Py_END_ALLOW_THREADS
  PyObject* out = PyList_New(static_cast<Py_ssize_t>(taken.size()));
  if (out == nullptr) return nullptr;  // (the taken calls stay unanswered: out of memory)
  for (size_t i = 0; i < taken.size(); ++i) {
    InferCall* call = taken[i];
    std::vector<grpc::Slice> slices;
    call->request_.Dump(&slices).ok();
    PyObject* data = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(call->request_.Length()));
    if (data == nullptr) {
      Py_DECREF(out);
      return nullptr;
    }
    char* at = PyBytes_AS_STRING(data);
    for (const grpc::Slice& slice : slices) {
      std::memcpy(at, slice.begin(), slice.size());
      at += slice.size();
    }
    call->request_.Clear();
    PyList_SET_ITEM(out, static_cast<Py_ssize_t>(i), Py_BuildValue("(NN)", PyLong_FromVoidPtr(call), data));
  }
  return out;
}

PyObject* FinishCalls(PyObject*, PyObject* args) {
  PyObject* items;
  if (!PyArg_ParseTuple(args, "O!", &PyList_Type, &items)) return nullptr;
  std::vector<Reply> replies;
  replies.reserve(static_cast<size_t>(PyList_GET_SIZE(items)));
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); ++i) {
    PyObject *handle, *payload;
    int code;
    const char* message;
    Py_ssize_t message_size;
    if (!PyArg_ParseTuple(PyList_GET_ITEM(items, i), "OOis#", &handle, &payload, &code, &message, &message_size)) {
      return nullptr;
    }
    auto* call = static_cast<InferCall*>(PyLong_AsVoidPtr(handle));
    if (call == nullptr) return nullptr;
    if (payload != Py_None) {
      if (!PyBytes_Check(payload)) {
        PyErr_SetString(PyExc_TypeError, "a response is bytes or None");
        return nullptr;
      }
      replies.push_back({call, true, Buffer(PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload)), grpc::Status()});
    } else {
      replies.push_back({call, false, grpc::ByteBuffer(),
                         grpc::Status(static_cast<grpc::StatusCode>(code), std::string(message, message_size))});
    }
  }
  Py_BEGIN_ALLOW_THREADS
  {
    std::lock_guard<std::mutex> lock(replier.mu);
    for (Reply& reply : replies) replier.replies.push_back(std::move(reply));
  }
  replier.cv.notify_one();
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

PyObject* Stop(PyObject*, PyObject* args) {
  double grace;
  if (!PyArg_ParseTuple(args, "d", &grace)) return nullptr;
  Py_BEGIN_ALLOW_THREADS
  std::deque<InferCall*> queued;
  {
    std::lock_guard<std::mutex> lock(queue.mu);
    queue.closing = true;
    queued.swap(queue.calls);
  }
  queue.cv.notify_all();
  for (InferCall* call : queued) call->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, kStopping));
  {
    std::lock_guard<std::mutex> lock(replier.mu);
    replier.stopping = true;
  }
  replier.cv.notify_one();
  if (replier.thread.joinable()) replier.thread.join();  // every reply handed over is started
  if (server) {
    server->Shutdown(std::chrono::system_clock::now() +
                     std::chrono::microseconds(static_cast<long long>(grace * 1e6)));
    server->Wait();
  }
  Py_END_ALLOW_THREADS
  server.reset();
  Py_RETURN_NONE;
}

PyMethodDef kMethods[] = {
    {"start", Start, METH_VARARGS, "start(address, max_message_bytes) -> port"},
    {"take", Take, METH_VARARGS, "take(max_calls, want, max_wait_us, gap_us, timeout_ms) -> [(handle, bytes)]"},
    {"finish", FinishCalls, METH_VARARGS, "finish([(handle, bytes or None, code, message)])"},
    {"stop", Stop, METH_VARARGS, "stop(grace_seconds)"},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_oip_front", "ModelInfer over C++ gRPC (serving.native)", -1, kMethods};

}  // namespace

PyMODINIT_FUNC PyInit__oip_front() { return PyModule_Create(&kModule); }
