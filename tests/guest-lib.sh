# Shell helpers for end-to-end cases, sourced inside the test host.
# `boot_case NAME VCPUS MEM_MIB KERNEL BOOT_ARGS [EXTRA_JSON]` boots a guest
# with brique (initramfs from $GUEST_INITRAMFS), prints its console between
# markers, and ends with the line `BRIQUE_CASE NAME exit=STATUS`.

DEFAULT_ARGS="console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"

boot_case() {
    name="$1" vcpus="$2" mem="$3" kernel="$4" args="$5" extra="${6:-}"
    cat > "/tmp/$name.json" <<JSON
{
  "boot-source": {
    "kernel_image_path": "$kernel",
    "initrd_path": "$GUEST_INITRAMFS",
    "boot_args": "$args"
  },
  "machine-config": {"vcpu_count": $vcpus, "mem_size_mib": $mem}$extra
}
JSON
    echo "BRIQUE_CASE_BEGIN $name"
    "$BRIQUE" --config-file "/tmp/$name.json" < /dev/null > "/tmp/$name.out" 2> "/tmp/$name.err"
    status=$?
    sed "s/^/[$name] /" "/tmp/$name.out"
    sed "s/^/[$name:stderr] /" "/tmp/$name.err"
    echo "BRIQUE_CASE $name exit=$status"
}
