# Runs inside the test host: the block benchmark with brique, then with
# QEMU microvm, on the same 512 MiB data image (tmpfs), RUNS times each,
# then prints medians and ratios brique/QEMU.
runs=${1:-2}
args="console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"
run='for d in vda vdb; do mount -o ro /dev/$d /mnt 2>/dev/null \&\& break; done; sh /mnt/block-run.sh'
run_plain=$(printf '%s' "$run" | sed 's/\\&/\&/g')
dd if=/dev/zero of=/tmp/data.img bs=1M count=512 2>/dev/null
cat > /tmp/blk.json <<JSON
{
  "boot-source": {"kernel_image_path": "$GUEST_VMLINUX", "initrd_path": "$GUEST_INITRAMFS",
                  "boot_args": "$args brique_run=\"$run_plain\""},
  "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
  "drives": [
    {"drive_id": "data", "path_on_host": "/tmp/data.img", "is_root_device": false,
     "is_read_only": false, "cache_type": "Writeback"},
    {"drive_id": "tools", "path_on_host": "/brique/with/tools.img", "is_root_device": false,
     "is_read_only": true}
  ]
}
JSON
: > /tmp/results
for i in $(seq 1 "$runs"); do
    "$BRIQUE" --no-api --config-file /tmp/blk.json < /dev/null 2>&1 | grep '^BLKBENCH' | tr -d '\r' | sed 's/^/brique /' | tee -a /tmp/results
    timeout 300 "$QEMU" -L "$QEMU_DATADIR" -M microvm,x-option-roms=off,rtc=off,acpi=off \
        -accel kvm -cpu host -m 256 -smp 1 -nodefaults -no-user-config -display none -no-reboot \
        -serial stdio -kernel "$GUEST_VMLINUX" -initrd "$GUEST_INITRAMFS" \
        -append "$args brique_run=\"$run_plain\"" \
        -drive file=/tmp/data.img,format=raw,if=none,id=data,cache=writeback,aio=threads \
        -device virtio-blk-device,drive=data,serial=data \
        -drive file=/brique/with/tools.img,format=raw,if=none,id=tools,readonly=on \
        -device virtio-blk-device,drive=tools,serial=tools \
        < /dev/null 2>&1 | grep '^BLKBENCH' | tr -d '\r' | sed 's/^/qemu /' | tee -a /tmp/results
done
echo
echo "block benchmark: $runs runs each, 1 vCPU, O_DIRECT in the guest, queue depth 1, image in tmpfs"
. ./report.sh
report "BLKBENCH seqwrite" MiBps
report "BLKBENCH seqread" MiBps
report "BLKBENCH randread" IOPS
