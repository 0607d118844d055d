// The ublk kernel ABI (include/uapi/linux/ublk_cmd.h), defined here so the
// build does not depend on the installed kernel headers (Debian 12's may lack
// the file or carry a different revision). Layouts are the 6.1 ones with the
// fields later kernels gave names to (dev_path_len, owner_uid/gid: 6.3); sizes
// never changed and are checked against the values verified on 6.1
// (shared/UBLK-NOTES.md).
#ifndef UQ_SRC_UBLK_UBLK_UAPI_H_
#define UQ_SRC_UBLK_UBLK_UAPI_H_

#include <linux/ioctl.h>

#include <cerrno>
#include <cstdint>

namespace uq::ublk {

// Control commands, legacy numbering (the only one 6.1 knows).
inline constexpr uint32_t kCmdGetQueueAffinity = 0x01;
inline constexpr uint32_t kCmdGetDevInfo = 0x02;
inline constexpr uint32_t kCmdAddDev = 0x04;
inline constexpr uint32_t kCmdDelDev = 0x05;
inline constexpr uint32_t kCmdStartDev = 0x06;
inline constexpr uint32_t kCmdStopDev = 0x07;
inline constexpr uint32_t kCmdSetParams = 0x08;
inline constexpr uint32_t kCmdGetParams = 0x09;
inline constexpr uint32_t kCmdStartUserRecovery = 0x10;
inline constexpr uint32_t kCmdEndUserRecovery = 0x11;
// 6.3+: GET_DEV_INFO that carries the /dev/ublkcN path (permission check).
inline constexpr uint32_t kCmdGetDevInfo2 = 0x12;
// 6.5+, ioctl-encoded only (UBLK_U_CMD_GET_FEATURES): the driver's UBLK_F_*
// set as 8 bytes at addr (len must be 8). Needs no device and no capability.
inline constexpr uint32_t kCmdGetFeatures = 0x13;

// I/O commands on /dev/ublkcN, legacy numbering.
inline constexpr uint32_t kIoFetchReq = 0x20;
inline constexpr uint32_t kIoCommitAndFetchReq = 0x21;

// Results of FETCH / COMMIT_AND_FETCH completions.
inline constexpr int32_t kIoResOk = 0;
inline constexpr int32_t kIoResNeedGetData = 1;
inline constexpr int32_t kIoResAbort = -ENODEV;

inline constexpr uint32_t kMaxQueueDepth = 4096;

// Device flags (ublksrv_ctrl_dev_info.flags, and GET_FEATURES' answer), with
// the kernel release that added each.
inline constexpr uint64_t kFlagSupportZeroCopy = 1ULL << 0;      // declared 6.0, works 6.15
inline constexpr uint64_t kFlagUringCmdCompInTask = 1ULL << 1;   // 6.0
inline constexpr uint64_t kFlagNeedGetData = 1ULL << 2;          // 6.0
inline constexpr uint64_t kFlagUserRecovery = 1ULL << 3;         // 6.0
inline constexpr uint64_t kFlagUserRecoveryReissue = 1ULL << 4;  // 6.0
// Devices of a user without CAP_SYS_ADMIN; every command about one carries
// the /dev/ublkcN path, checked with the caller's file permissions.
inline constexpr uint64_t kFlagUnprivilegedDev = 1ULL << 5;  // 6.3
// The server speaks ioctl-encoded command numbers (UBLK_U_*).
inline constexpr uint64_t kFlagCmdIoctlEncode = 1ULL << 6;  // 6.4
// Request data moves by pread/pwrite on /dev/ublkcN (UserCopyOffset), not
// through the FETCH buffer address (which must then be 0).
inline constexpr uint64_t kFlagUserCopy = 1ULL << 7;            // 6.5
inline constexpr uint64_t kFlagZoned = 1ULL << 8;               // 6.6
inline constexpr uint64_t kFlagUserRecoveryFailIo = 1ULL << 9;  // 6.13
inline constexpr uint64_t kFlagUpdateSize = 1ULL << 10;         // 6.16
inline constexpr uint64_t kFlagAutoBufReg = 1ULL << 11;         // 6.16
inline constexpr uint64_t kFlagQuiesce = 1ULL << 12;            // 6.16
inline constexpr uint64_t kFlagPerIoDaemon = 1ULL << 13;        // 6.16

// Device states (ublksrv_ctrl_dev_info.state).
inline constexpr uint16_t kStateDead = 0;
inline constexpr uint16_t kStateLive = 1;
inline constexpr uint16_t kStateQuiesced = 2;
inline constexpr uint16_t kStateFailIo = 3;  // newer kernels only

// ublksrv_io_desc.op_flags: op in bits 0-7, flags above.
inline constexpr uint8_t kOpRead = 0;
inline constexpr uint8_t kOpWrite = 1;
inline constexpr uint8_t kOpFlush = 2;
inline constexpr uint8_t kOpDiscard = 3;
inline constexpr uint8_t kOpWriteSame = 4;
inline constexpr uint8_t kOpWriteZeroes = 5;
inline constexpr uint32_t kIoFlagFua = 1U << 13;
inline constexpr uint32_t kIoFlagNoUnmap = 1U << 15;

// ublk_param_basic.attrs
inline constexpr uint32_t kAttrReadOnly = 1U << 0;
inline constexpr uint32_t kAttrRotational = 1U << 1;
inline constexpr uint32_t kAttrVolatileCache = 1U << 2;
inline constexpr uint32_t kAttrFua = 1U << 3;

// ublk_params.types
inline constexpr uint32_t kParamTypeBasic = 1U << 0;
inline constexpr uint32_t kParamTypeDiscard = 1U << 1;

// Per-queue stride of the descriptor area in /dev/ublkcN's mmap space: sized
// for the maximum depth whatever the real one.
inline constexpr uint64_t kIoDescQueueStrideEntries = kMaxQueueDepth;

struct CtrlCmd {  // struct ublksrv_ctrl_cmd, written at sqe->cmd
  uint32_t dev_id;
  uint16_t queue_id;  // 0xffff unless the command is about a queue
  uint16_t len;
  uint64_t addr;
  uint64_t data[1];
  // Unprivileged devices and GET_DEV_INFO2 (6.3+): addr starts with the
  // /dev/ublkcN path, dev_path_len bytes, then the command's own buffer; len
  // covers both. The kernel skips the path once it checked the permission.
  uint16_t dev_path_len;
  uint16_t pad;
  uint32_t reserved;
};

struct CtrlDevInfo {  // struct ublksrv_ctrl_dev_info
  uint16_t nr_hw_queues;
  uint16_t queue_depth;
  uint16_t state;
  uint16_t pad0;
  uint32_t max_io_buf_bytes;
  uint32_t dev_id;
  int32_t ublksrv_pid;
  uint32_t pad1;
  uint64_t flags;
  uint64_t ublksrv_flags;  // server-private, kept by the kernel
  uint32_t owner_uid;      // 6.3+: who added the device (set by the kernel)
  uint32_t owner_gid;
  uint64_t reserved1;
  uint64_t reserved2;
};

struct IoDesc {  // struct ublksrv_io_desc, read-only shared memory
  uint32_t op_flags;
  uint32_t nr_sectors;
  uint64_t start_sector;
  uint64_t addr;
};

struct IoCmd {  // struct ublksrv_io_cmd, written at sqe->cmd
  uint16_t q_id;
  uint16_t tag;
  int32_t result;
  uint64_t addr;
};

struct ParamBasic {  // struct ublk_param_basic
  uint32_t attrs;
  uint8_t logical_bs_shift;
  uint8_t physical_bs_shift;
  uint8_t io_opt_shift;
  uint8_t io_min_shift;
  uint32_t max_sectors;
  uint32_t chunk_sectors;
  uint64_t dev_sectors;
  uint64_t virt_boundary_mask;
};

struct ParamDiscard {  // struct ublk_param_discard
  uint32_t discard_alignment;
  uint32_t discard_granularity;
  uint32_t max_discard_sectors;
  uint32_t max_write_zeroes_sectors;
  uint16_t max_discard_segments;
  uint16_t reserved0;
};

struct Params {  // struct ublk_params; send len = sizeof (tail padding included)
  uint32_t len;
  uint32_t types;
  ParamBasic basic;
  ParamDiscard discard;
};

static_assert(sizeof(CtrlCmd) == 32);
static_assert(sizeof(CtrlDevInfo) == 64);
static_assert(sizeof(IoDesc) == 24);
static_assert(sizeof(IoCmd) == 16);
static_assert(sizeof(ParamBasic) == 32);
static_assert(sizeof(ParamDiscard) == 20);
static_assert(sizeof(Params) == 64);

// UBLK_F_USER_COPY: the file offset on /dev/ublkcN that addresses byte
// `buf_off` of request (q_id, tag)'s data (UBLKSRV_IO_BUF_OFFSET, then 25 bits
// of offset, 16 of tag, 12 of queue).
inline constexpr uint64_t kUserCopyBase = 0x80000000ULL;
inline constexpr int kUserCopyTagShift = 25;
inline constexpr int kUserCopyQueueShift = kUserCopyTagShift + 16;
inline constexpr uint64_t kUserCopyMaxBytes = 1ULL << kUserCopyTagShift;
inline constexpr uint64_t UserCopyOffset(uint16_t q_id, uint16_t tag, uint32_t buf_off) {
  return kUserCopyBase + (static_cast<uint64_t>(q_id) << kUserCopyQueueShift) +
         (static_cast<uint64_t>(tag) << kUserCopyTagShift) + buf_off;
}

// ioctl-encoded command numbers (UBLK_U_CMD_* / UBLK_U_IO_*): _IOR/_IOWR('u',
// nr, struct). 6.1 rejects these with EOPNOTSUPP.
inline constexpr uint32_t IoctlCtrl(uint32_t nr) {
  switch (nr) {
    case kCmdGetQueueAffinity:
    case kCmdGetDevInfo:
    case kCmdGetParams:
    case kCmdGetDevInfo2:
    case kCmdGetFeatures:
      return _IOR('u', nr, CtrlCmd);
    default:
      return _IOWR('u', nr, CtrlCmd);
  }
}
inline constexpr uint32_t IoctlIo(uint32_t nr) { return _IOWR('u', nr, IoCmd); }

inline constexpr const char* kControlPath = "/dev/ublk-control";
inline constexpr const char* kCharDevPrefix = "/dev/ublkc";
inline constexpr const char* kBlockDevPrefix = "/dev/ublkb";

}  // namespace uq::ublk

#endif  // UQ_SRC_UBLK_UBLK_UAPI_H_
