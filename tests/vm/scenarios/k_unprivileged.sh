#!/usr/bin/env bash
# (k) unprivileged devices (6.12): a user without CAP_SYS_ADMIN whom the
# administrator let open /dev/ublk-control (its group) attaches an overlay,
# writes and verifies it through /dev/ublkbN with fio, lists and detaches it;
# qemu-img check is clean. The VM has no udev: a loop here runs the RUN+=
# command of the project's udev rule (as configured for installation) for
# every new ublk node, with the build's helper in place of the installed one.
# Also: `features` as that user, one-line refusals (--user-copy on an
# unprivileged device, mount, recover), another user cannot touch the device,
# and the owner detaches it after its server was killed.
source "$(dirname "$0")/lib.sh"
need qemu-img fio jq setpriv stat

USER_ID=4242 GROUP_ID=4242 OTHER_ID=4343
as_user() { setpriv --reuid=$USER_ID --regid=$GROUP_ID --clear-groups env -u XDG_RUNTIME_DIR "$@"; }
as_other() { setpriv --reuid=$OTHER_ID --regid=$GROUP_ID --clear-groups env -u XDG_RUNTIME_DIR "$@"; }
HELPER=${UQ_UBLK_QCOW2_UDEV:-${UQ_BUILD_DIR:-.}/src/cli/ublk-qcow2-udev}
RULES=${UQ_UDEV_RULES:-${UQ_BUILD_DIR:-.}/src/cli/90-ublk-qcow2.rules}
[[ -x $HELPER ]] || skip "udev helper not found at $HELPER"
[[ -f $RULES ]] || skip "udev rule not found at $RULES"

# The rule that hands nodes to their owner: ACTION add, KERNEL ublk[bc]N,
# RUN+="<libexec>/ublk-qcow2-udev %k".
rule=$(grep -E '^ACTION=="add", KERNEL=="ublk\[bc\]\[0-9\]\*", RUN\+="[^"]*"' "$RULES") ||
  fail "no ublk node rule in $RULES"
run=$(sed -E 's/.*RUN\+="([^"]*)".*/\1/' <<<"$rule")
[[ $(basename "${run%% *}") == "$(basename "$HELPER")" && ${run#* } == "%k" ]] ||
  fail "the rule runs '$run', not the project's helper with %k"
log "udev rule: $rule"

# udev, as far as this rule goes: every new ublk node still root's gets the
# rule's command, %k = its kernel name.
udev_loop() {
  while :; do
    for n in /dev/ublkc[0-9]* /dev/ublkb[0-9]*; do
      [[ -e $n && $(stat -c %u "$n" 2>/dev/null) == 0 ]] || continue
      "$HELPER" "${n#/dev/}" 2>/dev/null || true
    done
    sleep 0.05
  done
}
udev_loop &
udev_pid=$!
ctl_mode=$(stat -c %a:%g /dev/ublk-control)
restore() {
  kill "$udev_pid" 2>/dev/null
  chmod "${ctl_mode%%:*}" /dev/ublk-control
  chgrp "${ctl_mode##*:}" /dev/ublk-control
}
trap 'rc=$?; restore; (exit $rc); cleanup' EXIT

# The administrator's part: /dev/ublk-control for the group (what the rule's
# GROUP="ublk", MODE="0660" line does on a real system).
chgrp $GROUP_ID /dev/ublk-control
chmod 0660 /dev/ublk-control
chmod 0755 "$WORK"
mkdir "$WORK/u" && chown $USER_ID:$GROUP_ID "$WORK/u"
cd "$WORK/u"

as_user "$UQ" features --output=json >features.json || fail "features as the user"
feature() { jq -r --arg n "$1" ".features[] | select(.name == \$n) | .$2" features.json; }
[[ $(jq -r .privileged features.json) == false ]] || fail "features: user counted as privileged"
[[ $(feature UNPRIVILEGED_DEV used) == true ]] || fail "features: UNPRIVILEGED_DEV not used"
[[ $(feature USER_COPY used) == false ]] || fail "features: USER_COPY used on an unprivileged device"

as_user qemu-img create -q -f qcow2 base.qcow2 64M
as_user qemu-io -f qcow2 -c "write -P 0x5a 0 32M" base.qcow2 >/dev/null
as_user qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 overlay.qcow2

# refused PATTERN CMD...: exit 1 with one "ublk-qcow2: " line matching PATTERN.
refused() {
  local pattern=$1 rc=0
  shift
  "$@" >out 2>err || rc=$?
  [[ $rc == 1 ]] || fail "[$*] exit $rc, want 1: $(cat err)"
  [[ $(wc -l <err) == 1 && $(cat err) == "ublk-qcow2: "* ]] || fail "[$*] not one line: $(cat err)"
  grep -Eq -e "$pattern" err || fail "[$*] message does not match /$pattern/: $(cat err)"
  log "ok   $(cat err)"
}
refused "user copy.*unprivileged" as_user "$UQ" attach --user-copy overlay.qcow2
assert_no_devices

# Attach, write and verify as the user.
dev=$(as_user "$UQ" attach --unprivileged overlay.qcow2) || fail "attach as uid $USER_ID failed"
[[ -b $dev ]] || fail "attach printed '$dev'"
id=$(dev_id "$dev")
log "uid $USER_ID attached $dev"
# The udev rule (our loop) hands the nodes over shortly after they appear.
wait_owned() {
  local n
  for n in "$@"; do
    for _ in $(seq 100); do [[ $(stat -c %u "$n") == "$USER_ID" ]] && break; sleep 0.1; done
    [[ $(stat -c %u:%g:%a "$n") == "$USER_ID:$GROUP_ID:600" ]] ||
      fail "$n is $(stat -c %u:%g:%a "$n"), not the user's"
  done
}
wait_owned /dev/ublkc$id "$dev"
as_user "$UQ" list --output=json >list.json || fail "list as the user"
jq -e ".[] | select(.id == $id) | .unprivileged and .owner_uid == $USER_ID and .user_copy == false" \
  list.json >/dev/null || fail "list as the user: $(cat list.json)"
"$UQ" list --output=json | jq -e ".[] | select(.id == $id) | .unprivileged" >/dev/null ||
  fail "root's list does not show device $id as unprivileged"

as_user fio --name=w --filename="$dev" --allow_file_create=0 --ioengine=io_uring --direct=1 \
  --rw=randwrite --bs=4k --iodepth=32 --size=16M --offset=4M --verify=md5 --do_verify=1 \
  --verify_fatal=1 --verify_dump=0 --output="$WORK/u/fio.out" ||
  { cat "$WORK/u/fio.out"; fail "fio as the user"; }
grep -E "err= *0" "$WORK/u/fio.out" >/dev/null || { cat "$WORK/u/fio.out"; fail "fio errors"; }
head -c 4M /dev/zero | tr '\0' 'Z' >zz && chmod 0644 zz
as_user cmp -n $((4 << 20)) "$dev" zz || fail "backing data below the fio range changed"
log "fio randwrite md5 verify through $dev as uid $USER_ID: ok"

# Root-only and other users' steps.
mkdir -p mnt
refused "mount needs root" as_user "$UQ" mount overlay.qcow2 mnt
if as_other "$UQ" detach "$dev" 2>err; then fail "uid $OTHER_ID detached uid $USER_ID's device"; fi
log "ok   another user cannot detach it: $(cat err)"
as_other "$UQ" detach --all || fail "detach --all as uid $OTHER_ID failed"
[[ -b $dev ]] || fail "$dev went away"

as_user "$UQ" detach "$dev" || fail "detach as the user"
for _ in $(seq 50); do [[ -e $dev ]] || break; sleep 0.1; done
assert_no_devices
check_image overlay.qcow2

# The server dies: no user recovery for unprivileged devices (the kernel drops
# it), so `recover` says so; the owner detaches the dead device.
dev=$(as_user "$UQ" attach overlay.qcow2) || fail "second attach as the user failed"
id=$(dev_id "$dev")
wait_owned "$dev"
pid=$(as_user "$UQ" list --output=json | jq -r ".[] | select(.id == $id) | .pid")
[[ $pid =~ ^[0-9]+$ ]] || fail "no server pid for $dev"
as_user dd if=/dev/urandom of="$dev" bs=64k count=16 oflag=direct status=none || fail "dd"
kill -9 "$pid"
refused "unprivileged.*recovery" as_user "$UQ" recover -n "$id"
as_user "$UQ" detach "$dev" || fail "detach of the dead unprivileged device"
assert_no_devices
check_image overlay.qcow2 allow-leaks
log PASS
