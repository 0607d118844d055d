#!/usr/bin/env bash
# (i) `ublk-qcow2 features` on each test kernel.
#  6.12: GET_FEATURES answers; ioctl-encoded commands; USER_COPY,
#        UNPRIVILEGED_DEV and CMD_IOCTL_ENCODE named and present; user copy used.
#  6.1:  no GET_FEATURES, a clean fallback (exit 0, legacy numbers, 6.1's set);
#        --user-copy and --unprivileged are refused with one line each.
source "$(dirname "$0")/lib.sh"
need jq setpriv qemu-img

cd "$WORK"
"$UQ" features >human.out || fail "features exited $?"
"$UQ" features --output=json >json.out || fail "features --output=json exited $?"
cat human.out
jq -e . json.out >/dev/null || fail "features --output=json is not JSON"

# feature NAME FIELD -> that field of the named feature in the JSON report.
feature() { jq -r --arg n "$1" ".features[] | select(.name == \$n) | .$2" json.out; }

release=$(uname -r)
[[ ${UQ_IN_VM:-0} != 1 || $release == "$UQ_VM_KERNEL_VERSION".* ]] ||
  fail "booted $release, expected $UQ_VM_KERNEL_VERSION"
case $release in
  6.12.*)
    [[ $(jq -r .get_features json.out) == true ]] || fail "GET_FEATURES did not answer"
    [[ $(jq -r .command_encoding json.out) == ioctl ]] || fail "not ioctl-encoded"
    for f in USER_COPY UNPRIVILEGED_DEV CMD_IOCTL_ENCODE; do
      [[ $(feature $f kernel) == yes ]] || fail "$f: kernel=$(feature $f kernel)"
      grep -Eq "^$f +[0-9.]+ +yes " human.out || fail "human output does not show $f present"
    done
    [[ $(feature USER_COPY used) == true ]] || fail "USER_COPY not used by default as root"
    [[ $(feature CMD_IOCTL_ENCODE used) == true ]] || fail "CMD_IOCTL_ENCODE not used"
    [[ $(feature UNPRIVILEGED_DEV used) == false ]] || fail "root should make privileged devices"
    [[ $(feature USER_RECOVERY_FAIL_IO kernel) == no ]] || fail "6.12 has no USER_RECOVERY_FAIL_IO"
    ;;
  6.1.*)
    [[ $(jq -r .get_features json.out) == false ]] || fail "6.1 answered GET_FEATURES?"
    [[ $(jq -r .command_encoding json.out) == legacy ]] || fail "6.1 should use legacy numbers"
    grep -q "^GET_FEATURES: *no" human.out || fail "human output does not say GET_FEATURES: no"
    [[ $(feature USER_RECOVERY kernel) == yes ]] || fail "USER_RECOVERY should be assumed"
    [[ $(feature USER_COPY kernel) == no ]] || fail "USER_COPY: $(feature USER_COPY kernel)"
    [[ $(feature UNPRIVILEGED_DEV used) == false ]] || fail "UNPRIVILEGED_DEV used on 6.1"

    # Explicit requests the kernel cannot meet: exit 1, one line each.
    qemu-img create -q -f qcow2 disk.qcow2 16M
    chmod 0777 "$WORK" && chmod 0666 disk.qcow2
    refused() {  # PATTERN CMD...
      local pattern=$1 rc=0
      shift
      "$@" >out 2>err || rc=$?
      [[ $rc == 1 ]] || fail "[$*] exit $rc, want 1: $(cat err)"
      [[ $(wc -l <err) == 1 && $(cat err) == "ublk-qcow2: "* ]] || fail "[$*] not one line: $(cat err)"
      grep -Eq -e "$pattern" err || fail "[$*] message does not match /$pattern/: $(cat err)"
      log "ok   $(cat err)"
    }
    refused "--user-copy.*(6\.5|USER_COPY)" "$UQ" attach --user-copy disk.qcow2
    # An unprivileged user whom the administrator let open /dev/ublk-control.
    mode=$(stat -c %a /dev/ublk-control)
    chmod 0666 /dev/ublk-control
    refused "--unprivileged.*(6\.3|UNPRIVILEGED_DEV)" \
      setpriv --reuid=4242 --regid=4242 --clear-groups "$UQ" attach --unprivileged disk.qcow2
    chmod "$mode" /dev/ublk-control
    ;;
  *)  # another kernel (a host with ublk): the report agrees with itself
    if [[ $(jq -r .get_features json.out) == true ]]; then
      [[ $(feature CMD_IOCTL_ENCODE kernel) == yes ]] || fail "GET_FEATURES without ioctl encoding"
    else
      [[ $(jq -r .command_encoding json.out) == legacy ]] || fail "no GET_FEATURES, not legacy"
    fi
    ;;
esac
assert_no_devices
log PASS
