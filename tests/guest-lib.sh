# Shell helpers for end-to-end cases, sourced inside the test host.
# `boot_case NAME VCPUS MEM_MIB KERNEL BOOT_ARGS [EXTRA_JSON]` boots a guest
# with brique (initramfs from $GUEST_INITRAMFS), prints its console between
# markers, and ends with the line `BRIQUE_CASE NAME exit=STATUS`.
# brique's stdin is $BRIQUE_STDIN (piped, so that it is pollable) or nothing.
# BRIQUE_INITRD=none boots without an initramfs (root from a drive).

DEFAULT_ARGS="console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"

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
        "$BRIQUE" --config-file "/tmp/$name.json" < "/tmp/$name.in" > "/tmp/$name.out" 2> "/tmp/$name.err" &
        pid=$!
        exec 3> "/tmp/$name.in"
        sleep 5
        cat "$BRIQUE_STDIN" >&3
        wait "$pid"
        status=$?
        exec 3>&-
    else
        "$BRIQUE" --config-file "/tmp/$name.json" < /dev/null > "/tmp/$name.out" 2> "/tmp/$name.err"
        status=$?
    fi
    sed "s/^/[$name] /" "/tmp/$name.out"
    sed "s/^/[$name:stderr] /" "/tmp/$name.err"
    echo "BRIQUE_CASE $name exit=$status"
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
