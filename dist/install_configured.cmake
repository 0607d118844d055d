# Runs at install time (written into cmake_install.cmake by
# uq_install_configured in dist/CMakeLists.txt): configures UQ_TEMPLATE with
# the paths of this install and installs it into UQ_DEST.
#
# At install time CMAKE_INSTALL_PREFIX is the real prefix: /usr/local (or
# --prefix) for cmake --install, /usr when cpack builds the .deb. Files that
# name installed paths (the unit's ExecStart, the udev rule's RUN) are
# configured here so that they name those.
set(_prefix "${CMAKE_INSTALL_PREFIX}")
set(UQ_BINDIR "${_prefix}/${UQ_BINDIR_REL}")
set(UQ_LIBEXECDIR "${_prefix}/${UQ_LIBEXECDIR_REL}")
set(UQ_DOCDIR "${_prefix}/${UQ_DOCDIR_REL}")
# The udev rule's helper (src/cli/90-ublk-qcow2.rules.in).
set(UQ_UDEV_HELPER "${UQ_LIBEXECDIR}/ublk-qcow2-udev")

# Directories the system reads whatever the prefix: a distribution package
# (prefix /usr) uses Debian's /lib/udev/rules.d and /lib/systemd/system; a
# local install puts its rule where udev reads local rules (/etc) and its unit
# under the prefix (systemd reads /usr/local/lib/systemd/system).
if(UQ_DEST STREQUAL "UDEV_RULES")
  if(UQ_UDEV_RULES_DIR)
    set(_dest "${UQ_UDEV_RULES_DIR}")
  elseif(_prefix STREQUAL "/usr")
    set(_dest "/lib/udev/rules.d")
  else()
    set(_dest "/etc/udev/rules.d")
  endif()
elseif(UQ_DEST STREQUAL "SYSTEMD_UNITS")
  if(UQ_SYSTEMD_UNIT_DIR)
    set(_dest "${UQ_SYSTEMD_UNIT_DIR}")
  elseif(_prefix STREQUAL "/usr")
    set(_dest "/lib/systemd/system")
  else()
    set(_dest "${_prefix}/lib/systemd/system")
  endif()
elseif(IS_ABSOLUTE "${UQ_DEST}")
  set(_dest "${UQ_DEST}")
else()
  set(_dest "${_prefix}/${UQ_DEST}")
endif()

configure_file("${UQ_TEMPLATE}" "${UQ_OUTPUT}" @ONLY)
file(INSTALL DESTINATION "${_dest}" TYPE FILE FILES "${UQ_OUTPUT}")
