// ShareDevice: one open image served by several queue threads.
//
// Returns `n` handles to `device`. Each handle forwards every call to the one
// Device, so all queues share its state (one L2 and refcount cache, one
// allocator, one dirty bit); the Device must be thread-safe for that (the
// qcow2 Image and RawDevice are, over files that are too: io::PerLoopFile).
// Closing a handle only retires it; closing the last one Close()s the Device,
// on the thread that closes it. Dropping handles without Close leaves the
// Device unclosed (like dropping the Device itself).
//
// Thread-safety: each handle is used by one queue thread; handles of one
// Device on different threads at the same time.
#ifndef UQ_SRC_ENGINE_SHARED_DEVICE_H_
#define UQ_SRC_ENGINE_SHARED_DEVICE_H_

#include <cstddef>
#include <memory>
#include <vector>

#include "src/engine/device.h"

namespace uq::engine {

// REQUIRES: device != nullptr, n >= 1.
std::vector<std::unique_ptr<Device>> ShareDevice(std::unique_ptr<Device> device, size_t n);

}  // namespace uq::engine

#endif  // UQ_SRC_ENGINE_SHARED_DEVICE_H_
