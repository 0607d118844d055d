// ublk-qcow2: serve qcow2 (or raw) images as /dev/ublkbN block devices.
#include "src/cli/commands.h"

int main(int argc, char** argv) { return uq::cli::Main(argc, argv); }
