#include "src/ublk/params.h"

#include <algorithm>
#include <bit>

namespace uq::ublk {

namespace {
uint8_t Log2(uint32_t v) { return static_cast<uint8_t>(std::bit_width(v) - 1); }
}  // namespace

Params ComputeParams(const Geometry& g) {
  Params p{};
  p.len = sizeof(Params);
  p.types = kParamTypeBasic;

  constexpr uint32_t kPhysical = 4096;
  uint32_t granularity = std::has_single_bit(g.granularity_bytes) ? g.granularity_bytes : kPhysical;
  uint32_t io_unit = std::max(granularity, kPhysical);
  if (g.max_io_buf_bytes >= kPhysical) {
    io_unit = std::min(io_unit, std::bit_floor(g.max_io_buf_bytes));
  }

  ParamBasic& b = p.basic;
  b.attrs = g.writethrough ? 0 : kAttrVolatileCache | kAttrFua;
  if (g.read_only) b.attrs |= kAttrReadOnly;
  b.logical_bs_shift = 9;
  b.physical_bs_shift = Log2(kPhysical);
  b.io_min_shift = Log2(io_unit);
  b.io_opt_shift = Log2(io_unit);
  b.max_sectors = g.max_io_buf_bytes >> 9;
  b.chunk_sectors = granularity >= kMinChunkBytes ? granularity >> 9 : 0;
  b.dev_sectors = g.size_bytes >> 9;

  if (!g.read_only) {
    p.types |= kParamTypeDiscard;
    ParamDiscard& d = p.discard;
    d.discard_alignment = 0;
    d.discard_granularity = std::max(granularity, 512U);
    d.max_discard_sectors = kMaxDiscardBytes >> 9;
    d.max_write_zeroes_sectors = kMaxDiscardBytes >> 9;
    d.max_discard_segments = 1;
  }
  return p;
}

}  // namespace uq::ublk
