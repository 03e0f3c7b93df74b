# Runs inside the guest (from the read-only "tools" disk): finds the disk
# whose serial is "data" and benchmarks it.
for d in /sys/block/vd*; do
    [ "$(cat "$d/serial" 2>/dev/null)" = data ] && dev=/dev/${d##*/}
done
[ -n "$dev" ] || { echo "BLKBENCH no data disk"; exit 1; }
/mnt/blkbench seqwrite "$dev" "${BLKBENCH_MIB:-256}"
/mnt/blkbench seqread "$dev" "${BLKBENCH_MIB:-256}"
/mnt/blkbench randread "$dev" "${BLKBENCH_SECONDS:-5}"
