// Host-to-GPU copies that do not make the host wait. A plain copy from
// pageable memory synchronises with the device's stream, which stalls a
// denoising loop on every stochastic step; staging through pinned memory
// lets the copy be queued like a kernel (libtorch's pinned allocator keeps
// the staging buffer alive until the copy has run).
#include <ATen/ATen.h>

#include <cstring>
#include <exception>

extern "C" {

// A new at::Tensor* (tch's C_tensor): `tensor` (on the CPU) on CUDA device `device`.
void* sd_upload_async(void* tensor, int device, char** error) {
  try {
    const auto& src = *static_cast<at::Tensor*>(tensor);
    at::Tensor out = src.pin_memory().to(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device)),
                                         /*non_blocking=*/true);
    return new at::Tensor(std::move(out));
  } catch (const std::exception& e) {
    *error = strdup(e.what());
    return nullptr;
  }
}

}  // extern "C"
