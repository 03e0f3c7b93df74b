# Shell helpers for end-to-end cases, sourced inside the test host.
# `boot_case NAME VCPUS MEM_MIB KERNEL BOOT_ARGS [EXTRA_JSON]` boots a guest
# with brique (initramfs from $GUEST_INITRAMFS), prints its console between
# markers, and ends with the line `BRIQUE_CASE NAME exit=STATUS`.
# brique's stdin is $BRIQUE_STDIN (piped, so that it is pollable; typed once
# the guest's init has started) or nothing.
# BRIQUE_INITRD=none boots without an initramfs (root from a drive).

# The same names on both test hosts: $GUEST_KERNEL is the guest kernel
# (x86_64: the ELF vmlinux; aarch64: the Image), $ARCH the host's machine.
ARCH="$(uname -m)"
if [ "$ARCH" = aarch64 ]; then
    GUEST_KERNEL="$GUEST_IMAGE"
    DEFAULT_ARGS="console=ttyS0 reboot=k panic=1"
else
    GUEST_KERNEL="$GUEST_VMLINUX"
    DEFAULT_ARGS="console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"
fi

boot_case() {
    name="$1" vcpus="$2" mem="$3" kernel="$4" args="$5" extra="${6:-}"
    initrd_line="\"initrd_path\": \"${BRIQUE_INITRD:-$GUEST_INITRAMFS}\","
    [ "${BRIQUE_INITRD:-}" = none ] && initrd_line=""
    cat > "/tmp/$name.json" <<JSON
{
  "boot-source": {
    "kernel_image_path": "$kernel",
    $initrd_line
    "boot_args": "$args"
  },
  "machine-config": {"vcpu_count": $vcpus, "mem_size_mib": $mem}$extra
}
JSON
    echo "BRIQUE_CASE_BEGIN $name"
    if [ -n "${BRIQUE_STDIN:-}" ]; then
        # A FIFO kept open until brique ends; typed once the guest is up.
        rm -f "/tmp/$name.in" && mkfifo "/tmp/$name.in"
        "$BRIQUE" --no-api --config-file "/tmp/$name.json" < "/tmp/$name.in" > "/tmp/$name.out" 2> "/tmp/$name.err" &
        pid=$!
        exec 3> "/tmp/$name.in"
        # Typed once the guest's init runs: bytes sent earlier can be lost
        # when the guest's serial driver resets the UART FIFO, as on real
        # hardware.
        # Both waits together stay well inside the test host's own time
        # limit, so that a guest that never gets there is reported (with
        # brique's threads) instead of the whole run timing out silently.
        if wait_for_line "/tmp/$name.out" BRIQUE_GUEST_INIT_OK "$pid" 120; then
            sleep 1
            cat "$BRIQUE_STDIN" >&3
            BRIQUE_CASE_TIMEOUT=120 wait_or_kill "$pid" "$name"
            status=$?
        else
            echo "BRIQUE_CASE_NOTE $name: no BRIQUE_GUEST_INIT_OK within 120 s (or brique ended)"
            BRIQUE_CASE_TIMEOUT=1 wait_or_kill "$pid" "$name"
            status=$?
        fi
        exec 3>&-
    else
        "$BRIQUE" --no-api --config-file "/tmp/$name.json" < /dev/null > "/tmp/$name.out" 2> "/tmp/$name.err" &
        wait_or_kill "$!" "$name"
        status=$?
    fi
    sed "s/^/[$name] /" "/tmp/$name.out"
    sed "s/^/[$name:stderr] /" "/tmp/$name.err"
    echo "BRIQUE_CASE $name exit=$status"
}

# wait_or_kill PID NAME: waits for brique to end; after $BRIQUE_CASE_TIMEOUT
# seconds (default 300) says so with the state of each brique thread, kills
# it, and returns its (killed) status, so that a hung case fails on its own
# instead of holding up the whole test host.
wait_or_kill() {
    pid="$1" name="$2" limit="${BRIQUE_CASE_TIMEOUT:-300}"
    ticks=0
    while [ -e "/proc/$pid" ] && [ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" != Z ]; do
        ticks=$((ticks + 1))
        if [ "$ticks" -gt $((limit * 5)) ]; then
            echo "BRIQUE_CASE_TIMEOUT $name: brique still runs after ${limit}s; its threads:"
            for task in /proc/"$pid"/task/*; do
                echo "  $(cat "$task/comm") state=$(cut -d' ' -f3 "$task/stat") wchan=$(cat "$task/wchan" 2>/dev/null)"
            done
            kill -9 "$pid"
            break
        fi
        sleep 0.2
    done
    wait "$pid"
}

# wait_for_line FILE PREFIX PID SECONDS: waits until a line of FILE starts
# with PREFIX (true), or PID exits or SECONDS pass (false).
wait_for_line() {
    file="$1" prefix="$2" pid="$3" seconds="$4"
    for i in $(seq 1 "$seconds"); do
        grep -q "^$prefix" "$file" && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 1
    done
    return 1
}
