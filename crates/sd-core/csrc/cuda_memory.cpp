// Peak GPU memory of libtorch's caching allocator (what
// torch.cuda.max_memory_allocated / max_memory_reserved report), for the
// benchmarks' memory columns.
#include <ATen/Context.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>
#include <exception>

namespace {
constexpr size_t kAggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);

// The allocator knows no device until CUDA's first use ("Invalid device
// argument" before): a low-memory pipeline has put nothing there at load.
void init_cuda() { at::globalContext().lazyInitDevice(c10::DeviceType::CUDA); }
}

extern "C" {

// Writes peak allocated and peak reserved bytes since the last reset.
int sd_cuda_memory_peak(int device, int64_t* allocated, int64_t* reserved, char** error) {
  try {
    init_cuda();
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    *allocated = stats.allocated_bytes[kAggregate].peak;
    *reserved = stats.reserved_bytes[kAggregate].peak;
    return 0;
  } catch (const std::exception& e) {
    *error = strdup(e.what());
    return 1;
  }
}

int sd_cuda_memory_reset_peak(int device, char** error) {
  try {
    init_cuda();
    c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(device));
    return 0;
  } catch (const std::exception& e) {
    *error = strdup(e.what());
    return 1;
  }
}

// Bytes a new allocation on `device` could still get: what the driver has
// free plus what the caching allocator holds reserved but unused.
int sd_cuda_memory_free(int device, int64_t* free_bytes, char** error) {
  try {
    init_cuda();
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
    size_t free = 0;
    size_t total = 0;
    cudaError_t status = cudaMemGetInfo(&free, &total);
    if (status != cudaSuccess) {
      *error = strdup(cudaGetErrorString(status));
      return 1;
    }
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    int64_t cached = stats.reserved_bytes[kAggregate].current - stats.allocated_bytes[kAggregate].current;
    *free_bytes = static_cast<int64_t>(free) + cached;
    return 0;
  } catch (const std::exception& e) {
    *error = strdup(e.what());
    return 1;
  }
}

}  // extern "C"
