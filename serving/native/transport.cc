// _transport: a C++ gRPC transport for advguard's native front end (serving/native), as a CPython
// extension module. Transport only: it holds no policy and never parses a message. Every unary
// method of the table Python gives `start` arrives on gRPC's own threads (callback API, generic
// service: requests and responses stay serialized bytes), waits in one queue, and a Python thread
// takes the calls a batch at a time (`take`, the GIL released while it waits) and hands back each
// call's serialized response or its status (`finish`). What a request means, the checks, the
// guard and the answers are Python's (serving.native.front on serving.pipeline, serving.grpc.oip
// and serving.grpc.classify).
//
// Refused here, before a message is read (and reported to Python by `refused` for its metrics):
// a call without `authorization: Bearer <token>` when a token is set (UNAUTHENTICATED), a call
// after `drain` (UNAVAILABLE), a method the table marks unimplemented (UNIMPLEMENTED with its
// message); the table's open methods (health checks) skip the first two. Past `max_concurrent`
// live calls gRPC's answer is RESOURCE_EXHAUSTED, as grpc.aio's, and past `max_queue` calls waiting
// for `take` RESOURCE_EXHAUSTED with the `queue_full` message; an unknown method UNIMPLEMENTED.
//
// Python API (one server per process):
//   start(address, max_message_bytes, methods, token, max_concurrent, max_queue, unauthenticated, draining,
//         queue_full, tls, reuse_port) -> port
//       methods: [(path, flags, message)], flags: OPEN 1 | UNIMPLEMENTED 2; token: bytes or None;
//       max_concurrent, max_queue: 0 for no limit; unauthenticated, draining, queue_full: the refusals'
//       messages; tls: None (plaintext) or (PEM certificate chain, PEM key, PEM client CA or None:
//       with one, clients must present a certificate it signed); reuse_port: share the port with
//       other processes that set it (SO_REUSEPORT, `--workers`); off, a port in use is an error
//   take(max_calls, want, max_wait_us, gap_us, timeout_ms)
//         -> [(handle, method index, bytes, arrival_ns, deadline_ns)]
//       waits up to timeout_ms for a first call; then, while fewer than `want` calls wait, up to
//       max_wait_us from the first and gap_us from the latest arrival; at most max_calls.
//       arrival_ns, deadline_ns: when the call arrived and when the client's deadline passes (0:
//       none), on time.monotonic_ns()'s clock
//   finish([(handle, response bytes or None, code, message), ...])  every taken call, once; the
//       replies of a batch are started on gRPC by the module's own reply thread (a lone reply by
//       the caller, GIL released)
//   refused() -> [(method index, code)]  the calls refused here since the last call
//   in_flight() -> int  calls accepted and not yet done
//   waiting() -> int  calls queued for `take`
//   drain()  from now on every call but the open methods' is refused UNAVAILABLE
//   stop(grace_seconds)  new and queued calls end UNAVAILABLE; in-flight ones get the grace
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <algorithm>
#include <atomic>
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

constexpr int kOpen = 1;
constexpr int kUnimplemented = 2;
constexpr char kStopping[] = "the server is stopping";
constexpr char kTooMany[] = "Concurrent RPC limit exceeded!";  // grpc.aio's words

struct Method {
  std::string path;
  int flags;
  std::string message;  // UNIMPLEMENTED's
};

struct Settings {
  std::vector<Method> methods;
  std::string bearer;  // "Bearer <token>", empty: no auth
  long max_concurrent = 0;
  size_t max_queue = 0;  // calls waiting for `take`; 0: no limit
  std::string unauthenticated, draining, queue_full;
};

class Call;

struct Queue {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Call*> calls;
  Clock::time_point last_arrival;
  bool closing = false;
};

// Process-lifetime state, allocated once and never destroyed: no static destructor may run while
// gRPC's threads could still touch it, or destroy a joinable thread if Python exits without stop().
Queue& queue = *new Queue;
Settings& settings = *new Settings;
std::atomic<bool> draining{false};
std::atomic<long> live{0};
std::mutex& refusals_mu = *new std::mutex;
std::vector<std::pair<int, int>>& refusals = *new std::vector<std::pair<int, int>>;
std::unique_ptr<grpc::Server>& server = *new std::unique_ptr<grpc::Server>;
std::unique_ptr<grpc::CallbackGenericService>& service = *new std::unique_ptr<grpc::CallbackGenericService>;

grpc::ByteBuffer Buffer(const char* data, size_t size) {
  grpc::Slice slice(data, size);  // copies
  return grpc::ByteBuffer(&slice, 1);
}

void Record(int method, grpc::StatusCode code) {
  std::lock_guard<std::mutex> lock(refusals_mu);
  refusals.emplace_back(method, static_cast<int>(code));
}

// When the client's deadline passes, on the steady clock (max: none).
Clock::time_point DeadlineOf(grpc::GenericCallbackServerContext* context) {
  const auto left = context->deadline() - std::chrono::system_clock::now();
  if (left > std::chrono::hours(24 * 365)) return Clock::time_point::max();  // none (gRPC's infinite future)
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(left);
}

// One unary call: read its one message, queue it, answer when Python says.
class Call final : public grpc::ServerGenericBidiReactor {
 public:
  Call(int method, Clock::time_point deadline) : method_(method), arrival_(Clock::now()), deadline_(deadline) {
    live.fetch_add(1, std::memory_order_relaxed);
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the call carried no request message"));
      return;
    }
    bool closing, full = false;
    {
      std::lock_guard<std::mutex> lock(queue.mu);
      closing = queue.closing;
      full = settings.max_queue > 0 && queue.calls.size() >= settings.max_queue;
      if (!closing && !full) {
        queue.calls.push_back(this);
        queue.last_arrival = Clock::now();
      }
    }
    if (closing) {
      Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, kStopping));
    } else if (full) {
      Record(method_, grpc::StatusCode::RESOURCE_EXHAUSTED);
      Finish(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, settings.queue_full));
    } else {
      queue.cv.notify_one();
    }
  }

  void Answer(grpc::ByteBuffer response) {
    response_ = std::move(response);
    StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
  }

  void OnDone() override {
    live.fetch_sub(1, std::memory_order_relaxed);
    delete this;
  }

  const int method_;
  const Clock::time_point arrival_, deadline_;
  grpc::ByteBuffer request_;

 private:
  grpc::ByteBuffer response_;
};

// A call ended before its message is read.
class Refused final : public grpc::ServerGenericBidiReactor {
 public:
  explicit Refused(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

bool Authorized(grpc::GenericCallbackServerContext* context) {
  const auto& metadata = context->client_metadata();
  auto found = metadata.find("authorization");
  if (found == metadata.end() || found->second.size() != settings.bearer.size()) return false;
  unsigned char differ = 0;  // constant time in the token's bytes, as hmac.compare_digest
  for (size_t i = 0; i < settings.bearer.size(); ++i) differ |= found->second.data()[i] ^ settings.bearer[i];
  return differ == 0;
}

grpc::ServerGenericBidiReactor* Refuse(int method, grpc::StatusCode code, const std::string& message) {
  Record(method, code);
  return new Refused(grpc::Status(code, message));
}

class Service final : public grpc::CallbackGenericService {
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* context) override {
    const std::string& path = context->method();
    int index = -1;
    for (size_t i = 0; i < settings.methods.size(); ++i) {
      if (settings.methods[i].path == path) {
        index = static_cast<int>(i);
        break;
      }
    }
    if (index < 0) return new Refused(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "Method not found!"));
    const Method& method = settings.methods[index];
    if (settings.max_concurrent > 0 && live.load(std::memory_order_relaxed) >= settings.max_concurrent) {
      return new Refused(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, kTooMany));
    }
    if (!(method.flags & kOpen)) {
      if (draining.load()) return Refuse(index, grpc::StatusCode::UNAVAILABLE, settings.draining);
      if (!settings.bearer.empty() && !Authorized(context)) {
        return Refuse(index, grpc::StatusCode::UNAUTHENTICATED, settings.unauthenticated);
      }
    }
    if (method.flags & kUnimplemented) return Refuse(index, grpc::StatusCode::UNIMPLEMENTED, method.message);
    return new Call(index, DeadlineOf(context));
  }
};

struct Reply {
  Call* call;
  bool ok;
  grpc::ByteBuffer response;
  grpc::Status status;
};

void Send(Reply& reply) {
  if (reply.ok) {
    reply.call->Answer(std::move(reply.response));
  } else {
    reply.call->Finish(reply.status);
  }
}

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
      for (Reply& reply : batch) Send(reply);
      batch.clear();
    }
  }
};

Replier& replier = *new Replier;

bool ReadMethods(PyObject* items) {
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); ++i) {
    const char *path, *message;
    int flags;
    if (!PyArg_ParseTuple(PyList_GET_ITEM(items, i), "sis", &path, &flags, &message)) return false;
    settings.methods.push_back({path, flags, message});
  }
  return true;
}

PyObject* Start(PyObject*, PyObject* args) {
  const char *address, *unauthenticated, *draining_message, *queue_full;
  int max_message_bytes;
  long max_concurrent;
  Py_ssize_t max_queue;
  PyObject *methods, *token, *tls;
  int reuse_port;
  if (!PyArg_ParseTuple(args, "siO!OlnsssOp", &address, &max_message_bytes, &PyList_Type, &methods, &token,
                        &max_concurrent, &max_queue, &unauthenticated, &draining_message, &queue_full, &tls,
                        &reuse_port)) {
    return nullptr;
  }
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (tls != Py_None) {  // (certificate chain, key, client CA or None): TLS, mutual with a client CA
    const char *cert, *key, *client_ca = nullptr;
    PyObject* ca;  // bytes or None
    if (!PyArg_ParseTuple(tls, "yyO", &cert, &key, &ca)) return nullptr;
    if (ca != Py_None && (client_ca = PyBytes_AsString(ca)) == nullptr) return nullptr;
    grpc::SslServerCredentialsOptions options(client_ca ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                                        : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
    if (client_ca) options.pem_root_certs = client_ca;
    options.pem_key_cert_pairs.push_back({key, cert});
    credentials = grpc::SslServerCredentials(options);
  }
  if (server) {
    PyErr_SetString(PyExc_RuntimeError, "the native front end is started already (one per process)");
    return nullptr;
  }
  settings = Settings();
  if (!ReadMethods(methods)) return nullptr;
  if (token != Py_None) {
    if (!PyBytes_Check(token) || PyBytes_GET_SIZE(token) == 0) {
      PyErr_SetString(PyExc_TypeError, "the token is non-empty bytes or None");
      return nullptr;
    }
    settings.bearer = "Bearer " + std::string(PyBytes_AS_STRING(token), PyBytes_GET_SIZE(token));
  }
  settings.max_concurrent = max_concurrent;
  settings.max_queue = max_queue > 0 ? static_cast<size_t>(max_queue) : 0;
  settings.unauthenticated = unauthenticated;
  settings.draining = draining_message;
  settings.queue_full = queue_full;
  int port = 0;
  Py_BEGIN_ALLOW_THREADS
  service = std::make_unique<Service>();
  grpc::ServerBuilder builder;
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, reuse_port);  // gRPC's default is on
  builder.AddListeningPort(address, credentials, &port);
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
  std::vector<Call*> taken;
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
    Call* call = taken[i];
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
    auto ns = [](Clock::time_point t) {
      return static_cast<long long>(std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count());
    };
    const long long deadline = call->deadline_ == Clock::time_point::max() ? 0 : ns(call->deadline_);
    PyList_SET_ITEM(out, static_cast<Py_ssize_t>(i),
                    Py_BuildValue("(NiNLL)", PyLong_FromVoidPtr(call), call->method_, data, ns(call->arrival_), deadline));
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
    auto* call = static_cast<Call*>(PyLong_AsVoidPtr(handle));
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
  if (replies.size() == 1) {
    Send(replies[0]);  // a batch of one (light load): sent from here, one thread hop less on its latency
  } else {
    {
      std::lock_guard<std::mutex> lock(replier.mu);
      for (Reply& reply : replies) replier.replies.push_back(std::move(reply));
    }
    replier.cv.notify_one();
  }
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

PyObject* Refusals(PyObject*, PyObject*) {
  std::vector<std::pair<int, int>> out;
  {
    std::lock_guard<std::mutex> lock(refusals_mu);
    out.swap(refusals);
  }
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(out.size()));
  if (list == nullptr) return nullptr;
  for (size_t i = 0; i < out.size(); ++i) {
    PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), Py_BuildValue("(ii)", out[i].first, out[i].second));
  }
  return list;
}

PyObject* InFlight(PyObject*, PyObject*) { return PyLong_FromLong(live.load()); }

PyObject* Waiting(PyObject*, PyObject*) {
  std::lock_guard<std::mutex> lock(queue.mu);
  return PyLong_FromSize_t(queue.calls.size());
}

PyObject* Drain(PyObject*, PyObject*) {
  draining.store(true);
  Py_RETURN_NONE;
}

PyObject* Stop(PyObject*, PyObject* args) {
  double grace;
  if (!PyArg_ParseTuple(args, "d", &grace)) return nullptr;
  Py_BEGIN_ALLOW_THREADS
  std::deque<Call*> queued;
  {
    std::lock_guard<std::mutex> lock(queue.mu);
    queue.closing = true;
    queued.swap(queue.calls);
  }
  queue.cv.notify_all();
  for (Call* call : queued) call->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, kStopping));
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
    {"start", Start, METH_VARARGS,
     "start(address, max_message_bytes, methods, token, max_concurrent, max_queue, unauthenticated, draining, "
     "queue_full, tls) -> port"},
    {"take", Take, METH_VARARGS,
     "take(max_calls, want, max_wait_us, gap_us, timeout_ms) -> [(handle, method, bytes, arrival_ns, deadline_ns)]"},
    {"finish", FinishCalls, METH_VARARGS, "finish([(handle, bytes or None, code, message)])"},
    {"refused", Refusals, METH_NOARGS, "refused() -> [(method, code)] since the last call"},
    {"in_flight", InFlight, METH_NOARGS, "in_flight() -> calls accepted and not yet done"},
    {"waiting", Waiting, METH_NOARGS, "waiting() -> calls queued for take"},
    {"drain", Drain, METH_NOARGS, "drain(): refuse every new call but the open methods' (UNAVAILABLE)"},
    {"stop", Stop, METH_VARARGS, "stop(grace_seconds)"},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_transport", "C++ gRPC transport of serving.native", -1, kMethods};

}  // namespace

PyMODINIT_FUNC PyInit__transport() { return PyModule_Create(&kModule); }
