// The fault matrix's workload: the image and the steps of a kind
// (FaultMatrix::Setup, BuildWorkload), and one run of them on a recording
// FaultFile over a PowerLossFile, with the model of what each sector may hold
// (RunWorkload, ApplyStep).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "format/create.h"
#include "format/header.h"
#include "src/engine/image.h"
#include "src/io/fault_file.h"
#include "src/io/mem_file.h"
#include "src/io/power_loss_file.h"
#include "src/io/run_sync.h"
#include "tests/engine/faults/fault_matrix_util.h"
#include "tests/engine/test_util.h"

namespace uq::engine::testing {

void FaultMatrix::Setup() {
  format::CreateOptions o = kind_.create;
  if (kind_.backing) {
    backing_bytes_.assign(kBackingBytes, std::byte{0});
    for (uint64_t s = 0; s < kBackingBytes / kSector; ++s) {
      std::memset(backing_bytes_.data() + s * kSector, Initial(s), kSector);
    }
    backing_ = std::make_unique<io::MemFile>(io::MemFile::Mode::kImmediate, backing_bytes_);
    backing_->set_read_only(true);
    files_.files[std::string("/images/") + kBackingName] = backing_.get();
    o.backing_file = kBackingName;
    o.backing_format = "raw";
  }
  BuildWorkload();
  o.size_bytes = kind_.create.size_bytes;
  auto img = testing::MakeImage(o);
  ASSERT_NE(img, nullptr);
  pristine_ = img->data();
  auto h = format::DecodeHeader(pristine_, format::DecodeLimits{pristine_.size()});
  ASSERT_TRUE(h.ok()) << h.status();
  initial_reftable_offset_ = h->refcount_table_offset;
  initial_reftable_bytes_ = uint64_t{h->refcount_table_clusters} << h->cluster_bits;
}

void FaultMatrix::BuildWorkload() {
  const uint64_t c = cluster_bytes();
  const uint64_t entry = kind_.create.extended_l2 ? 16 : 8;
  const uint64_t l2_span = c / entry * c;  // guest bytes one L2 table maps
  const uint64_t half = std::max<uint64_t>(c / 2, kSector);
  const uint64_t bulk_start = 4 * l2_span;
  const uint64_t bulk_bytes = kind_.bulk_clusters * c;
  // Room after the bulk region for one more L2 table.
  kind_.create.size_bytes = (bulk_start + bulk_bytes + l2_span - 1) / l2_span * l2_span + l2_span;
  auto w = [&](uint64_t off, uint64_t len, uint8_t v) {
    steps_.push_back({Step::kWrite, off, len, v, false});
  };
  auto flush = [&] { steps_.push_back({Step::kFlush, 0, 0, 0, false}); };
  auto read = [&](uint64_t off, uint64_t len) {
    steps_.push_back({Step::kRead, off, len, 0, false});
  };
  w(0, 3 * c, 0x11);  // allocating, cluster aligned
  flush();
  w(5 * c + 1024, 2048, 0x22);  // partial cluster: COW (backing or zeros)
  w(l2_span + half, c, 0x33);   // a new L2 table, two partial clusters
  read(0, 6 * c);
  w(bulk_start, bulk_bytes, 0x44);  // grows the refcount structures
  flush();
  steps_.push_back({Step::kDiscard, c, c, 0, false});
  steps_.push_back({Step::kZeroes, 2 * c, c, 0, true});
  steps_.push_back({Step::kZeroes, 5 * c, half, 0, false});
  w(c + 512, 1024, 0x55);           // reallocates the discarded cluster
  flush();                          // frees applied; the next writes may reuse them
  w(0, c, 0x66);                    // in place
  w(3 * l2_span + c, 2 * c, 0x77);  // another L2 table
  steps_.push_back({Step::kDiscard, bulk_start, std::min<uint64_t>(bulk_bytes, 4 * c), 0, false});
  steps_.push_back({Step::kZeroes, l2_span, 2 * c, 0, true});
  read(bulk_start, bulk_bytes);
  flush();

  // Every cluster a step touches is tracked sector by sector (so COW must
  // keep the untouched sectors of a cluster).
  for (const Step& s : steps_) {
    if (s.kind == Step::kFlush) continue;
    uint64_t first = s.offset_bytes / c * c;
    uint64_t end = (s.offset_bytes + s.length_bytes + c - 1) / c * c;
    for (uint64_t off = first; off < end; off += kSector) {
      Values v;
      v.set(Initial(off / kSector));
      initial_model_[off / kSector] = {v, v};
    }
  }
}

void FaultMatrix::ApplyStep(const Step& s, int result, Outcome* out, int injected) {
  auto& model = out->model;
  switch (s.kind) {
    case Step::kWrite:
    case Step::kDiscard:
    case Step::kZeroes: {
      const uint8_t v = s.kind == Step::kWrite ? s.value : 0;
      for (uint64_t off = s.offset_bytes; off < s.offset_bytes + s.length_bytes; off += kSector) {
        Sector& sec = model.at(off / kSector);
        if (result == 0) sec.live.reset();
        sec.live.set(v);
        sec.on_disk.set(v);
      }
      break;
    }
    case Step::kFlush:
      if (result == 0) {
        for (auto& [sector, sec] : model) sec.on_disk = sec.live;
      }
      break;
    case Step::kRead:
      break;
  }
  (void)injected;
}

Outcome FaultMatrix::RunWorkload(const std::optional<FaultRule>& rule,
                                 std::optional<uint64_t> subset_seed) {
  Outcome out;
  out.model = initial_model_;
  io::MemFile mem(io::MemFile::Mode::kImmediate, pristine_);
  // Failed operations never reach the power-loss journal (FaultFile above it).
  io::PowerLossFile power(&mem, pristine_);
  FaultFile fault(&power);
  fault.set_recording(true);
  int rule_id = rule ? fault.AddRule(*rule) : 0;
  const int injected = rule ? rule->error : 0;
  auto fired = [&] { return rule_id != 0 && fault.rule_fired(rule_id) > 0; };
  auto note = [&](int step) {
    if (out.fault_step == -2 && fired()) {
      out.fault_step = step;
      if (subset_seed) {
        std::mt19937_64 rng(*subset_seed);
        out.crash_bytes = power.CrashRandomSubset(rng);
      } else {
        out.crash_bytes = power.Crash();
      }
      out.crash_model = out.model;
    }
  };

  auto opened =
      io::RunSync(nullptr, OpenImage(std::make_unique<BorrowedFile>(&fault), Options(false)));
  note(-1);
  if (!opened.ok()) {
    out.open_error = -EIO;
    out.log = fault.log();
    out.bytes = mem.data();
    return out;
  }
  out.opened = true;
  std::unique_ptr<Device> dev = std::move(*opened);
  std::vector<std::byte> buf;
  for (size_t i = 0; i < steps_.size(); ++i) {
    const Step& s = steps_[i];
    int r = 0;
    switch (s.kind) {
      case Step::kWrite:
        buf.assign(s.length_bytes, std::byte{s.value});
        r = testing::WriteSync(*dev, s.offset_bytes, buf);
        break;
      case Step::kDiscard:
        r = io::RunSync(nullptr, dev->Discard(s.offset_bytes, s.length_bytes));
        break;
      case Step::kZeroes:
        r = io::RunSync(nullptr, dev->WriteZeroes(s.offset_bytes, s.length_bytes, s.may_unmap));
        break;
      case Step::kFlush:
        r = io::RunSync(nullptr, dev->Flush());
        break;
      case Step::kRead: {
        buf.assign(s.length_bytes, std::byte{0xee});
        r = testing::ReadSync(*dev, s.offset_bytes, buf);
        if (r != 0) break;
        for (uint64_t o = 0; o < s.length_bytes; o += kSector) {
          const Sector& sec = out.model.at((s.offset_bytes + o) / kSector);
          const uint8_t got = static_cast<uint8_t>(buf[o]);
          bool uniform = std::all_of(buf.begin() + static_cast<ptrdiff_t>(o),
                                     buf.begin() + static_cast<ptrdiff_t>(o + kSector),
                                     [&](std::byte b) { return b == buf[o]; });
          if (!uniform || !sec.live.test(got)) {
            if (++out.read_mismatches <= 3) {
              ADD_FAILURE() << kind_.name << ": live read at step " << i << ": sector "
                            << (s.offset_bytes + o) / kSector << " reads " << int(got)
                            << (uniform ? "" : " (not uniform)") << ", not a value it may hold";
            }
          }
        }
        break;
      }
    }
    out.results.push_back(r);
    ApplyStep(s, r, &out, injected);
    note(static_cast<int>(i));
  }
  absl::Status closed = io::RunSync(nullptr, dev->Close());
  out.closed_ok = closed.ok();
  out.close_message = closed.ToString();
  if (closed.ok()) {
    for (auto& [sector, sec] : out.model) sec.on_disk = sec.live;
  }
  note(static_cast<int>(steps_.size()));
  dev.reset();
  out.log = fault.log();
  out.bytes = mem.data();
  return out;
}

}  // namespace uq::engine::testing
