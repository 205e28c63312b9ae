// Tensors over memory that libtorch does not own (a weight file's mapping),
// released through a callback when the last tensor over it goes. tch's
// from_blob has no deleter, so a borrowed tensor could outlive its map; here
// each tensor holds a reference to the map instead.
#include <ATen/ATen.h>

#include <cstring>
#include <exception>

extern "C" {

// A new at::Tensor* (tch's C_tensor) of `like`'s dtype over `data`, or
// null with a strdup'd message. `release(owner)` runs once when the
// tensor's storage is freed; on error it never runs (the owner leaks).
void* sd_tensor_over(void* data, const int64_t* shape, const int64_t* strides, int64_t ndim,
                     void* like, void* owner, void (*release)(void*), char** error) {
  try {
    auto options = at::TensorOptions()
                       .dtype(static_cast<at::Tensor*>(like)->scalar_type())
                       .device(at::kCPU);
    at::Tensor out = at::from_blob(
        data, at::IntArrayRef(shape, ndim), at::IntArrayRef(strides, ndim),
        [owner, release](void*) { release(owner); }, options);
    return new at::Tensor(std::move(out));
  } catch (const std::exception& e) {
    *error = strdup(e.what());
    return nullptr;
  }
}

}  // extern "C"
