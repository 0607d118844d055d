#include "src/cli/sd_notify.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"

namespace uq::cli {
namespace {

// A datagram socket bound to `name` (a path, or "@name" for an abstract one),
// standing in for the service manager's notification socket.
class Listener {
 public:
  explicit Listener(const std::string& name) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, name.data(), name.size());
    const bool abstract = name[0] == '@';
    if (abstract) addr.sun_path[0] = '\0';
    socklen_t len =
        static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size() + (abstract ? 0 : 1));
    bound_ = fd_ >= 0 && ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), len) == 0;
  }
  ~Listener() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool bound() const { return bound_; }
  // The next datagram, or "" when none is queued.
  std::string Receive() {
    char buf[4096];
    ssize_t n = ::recv(fd_, buf, sizeof(buf), MSG_DONTWAIT);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
  }

 private:
  int fd_ = -1;
  bool bound_ = false;
};

TEST(SdNotifyTest, PathSocketGetsOneDatagram) {
  char dir[] = "/tmp/uq-notify.XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  std::string path = absl::StrCat(dir, "/notify");
  {
    Listener l(path);
    ASSERT_TRUE(l.bound());
    ASSERT_TRUE(SendNotify(path, "READY=1\nSTATUS=serving /dev/ublkb0").ok());
    EXPECT_EQ(l.Receive(), "READY=1\nSTATUS=serving /dev/ublkb0");
    EXPECT_EQ(l.Receive(), "");  // exactly one datagram
  }
  ::unlink(path.c_str());
  ::rmdir(dir);
}

TEST(SdNotifyTest, AbstractSocket) {
  std::string name = absl::StrCat("@uq-notify-test-", ::getpid());
  Listener l(name);
  ASSERT_TRUE(l.bound());
  ASSERT_TRUE(SendNotify(name, "READY=1").ok());
  EXPECT_EQ(l.Receive(), "READY=1");
}

TEST(SdNotifyTest, FromTheEnvironment) {
  std::string name = absl::StrCat("@uq-notify-env-", ::getpid());
  Listener l(name);
  ASSERT_TRUE(l.bound());
  ::setenv("NOTIFY_SOCKET", name.c_str(), 1);
  EXPECT_TRUE(NotifyServiceManager("STOPPING=1").ok());
  EXPECT_EQ(l.Receive(), "STOPPING=1");
  ::unsetenv("NOTIFY_SOCKET");
  EXPECT_TRUE(NotifyServiceManager("READY=1").ok());  // no manager: nothing to do
  EXPECT_EQ(l.Receive(), "");
}

TEST(SdNotifyTest, BadNamesAreOneLineErrors) {
  for (const std::string& name :
       {std::string("relative/path"), std::string("@"), std::string("/"), std::string(200, '/')}) {
    absl::Status st = SendNotify(name, "READY=1");
    EXPECT_FALSE(st.ok()) << name;
    EXPECT_EQ(st.message().find('\n'), absl::string_view::npos);
  }
  // Nobody listening.
  absl::Status st = SendNotify(absl::StrCat("@uq-notify-nobody-", ::getpid()), "READY=1");
  EXPECT_TRUE(absl::IsUnavailable(st)) << st;
}

}  // namespace
}  // namespace uq::cli
