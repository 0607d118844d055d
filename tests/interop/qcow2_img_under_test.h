// The qcow2-img an interop test runs, for tests whose CMake target defines
// QCOW2_IMG_PATH (the build's qcow2-img): $UQ_QCOW2_IMG when set (to run the
// tests against another build), else QCOW2_IMG_PATH.
#ifndef UQ_TESTS_INTEROP_QCOW2_IMG_UNDER_TEST_H_
#define UQ_TESTS_INTEROP_QCOW2_IMG_UNDER_TEST_H_

#include <cstdlib>
#include <string>

#include "tests/interop/interop_util.h"

namespace uq::interop {

// The program, quoted for a shell command line.
inline std::string Ours() {
  const char* env = std::getenv("UQ_QCOW2_IMG");
  return Quote(env && *env ? env : QCOW2_IMG_PATH);
}

}  // namespace uq::interop

#endif  // UQ_TESTS_INTEROP_QCOW2_IMG_UNDER_TEST_H_
