// CUDA graph capture and replay over libtorch's own at::cuda::CUDAGraph, for
// replaying a whole UNet step without launching its kernels one by one.
// Capture runs on a side stream from libtorch's pool (capture cannot use the
// default stream); the caller keeps the input and output tensors fixed.
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstring>
#include <exception>
#include <memory>
#include <optional>

namespace {
struct Graph {
  at::cuda::CUDAGraph graph;
  c10::cuda::CUDAStream stream;
  std::optional<c10::cuda::CUDAStreamGuard> guard;
  explicit Graph(int device) : stream(c10::cuda::getStreamFromPool(false, static_cast<c10::DeviceIndex>(device))) {}
};

char* copy_message(const std::exception& e) { return strdup(e.what()); }
}  // namespace

extern "C" {

void* sd_cuda_graph_new(int device, char** error) {
  try {
    return new Graph(device);
  } catch (const std::exception& e) {
    *error = copy_message(e);
    return nullptr;
  }
}

void sd_cuda_graph_free(void* graph) { delete static_cast<Graph*>(graph); }

// Makes the side stream current and starts capturing.
int sd_cuda_graph_begin(void* graph, char** error) {
  try {
    auto* g = static_cast<Graph*>(graph);
    g->guard.emplace(g->stream);
    g->graph.capture_begin();
    return 0;
  } catch (const std::exception& e) {
    static_cast<Graph*>(graph)->guard.reset();
    *error = copy_message(e);
    return 1;
  }
}

// Ends the capture and restores the previous stream.
int sd_cuda_graph_end(void* graph, char** error) {
  auto* g = static_cast<Graph*>(graph);
  try {
    g->graph.capture_end();
    g->guard.reset();
    return 0;
  } catch (const std::exception& e) {
    g->guard.reset();
    *error = copy_message(e);
    return 1;
  }
}

int sd_cuda_graph_replay(void* graph, char** error) {
  try {
    static_cast<Graph*>(graph)->graph.replay();
    return 0;
  } catch (const std::exception& e) {
    *error = copy_message(e);
    return 1;
  }
}

}  // extern "C"
