//! End-to-end virtio-blk: real Linux guests in the test host using brique's
//! disks (root filesystem, read-only data drive, flush durability).

use brique_tests::{on_test_hosts, run_in_test_host_on, HostArch};

fn guest_writes_to_its_root_disk_and_the_host_reads_them_back_with_two_drives(arch: HostArch) {
    let run = run_in_test_host_on(
        arch,
        r#"
        cp "$GUEST_ROOTFS" /tmp/root.ext4
        dd if=/dev/zero of=/tmp/second.img bs=1M count=2 2>/dev/null
        BRIQUE_INITRD=none boot_case rootfs 2 128 "$GUEST_KERNEL" \
          "$DEFAULT_ARGS"' brique_run=\"mount | grep ext4; echo second=$(cat /sys/block/vdb/serial):$(cat /sys/block/vdb/size); echo written-by-the-guest > /root/hello.txt; sync\"' \
          ', "drives": [{"drive_id": "second", "path_on_host": "/tmp/second.img", "is_root_device": false, "is_read_only": true},
                        {"drive_id": "rootfs", "path_on_host": "/tmp/root.ext4", "is_root_device": true, "is_read_only": false}]'
        debugfs -R 'cat /root/hello.txt' /tmp/root.ext4 2>/dev/null | sed 's/^/HOST_READ: /'
        "#,
        &[],
    );
    let case = run.case("rootfs");
    assert!(
        case.console_has("/dev/root on / type ext4 (rw"),
        "{case:#?}"
    );
    assert_eq!(case.exit, 0, "{case:#?}");
    assert!(
        run.console.contains("HOST_READ: written-by-the-guest"),
        "{}",
        run.console
    );
}

fn read_only_drive_is_readable_not_writable_and_unchanged(arch: HostArch) {
    let run = run_in_test_host_on(
        arch,
        r#"
        dd if=/dev/zero of=/tmp/ro.img bs=1M count=1 2>/dev/null
        printf 'BRIQUE-RO-DATA' | dd of=/tmp/ro.img conv=notrunc 2>/dev/null
        before=$(sha256sum /tmp/ro.img)
        boot_case ro 1 128 "$GUEST_KERNEL" \
          "$DEFAULT_ARGS"' brique_run=\"echo serial=$(cat /sys/block/vda/serial); echo ro=$(cat /sys/block/vda/ro); echo data=$(head -c 14 /dev/vda); if echo x | dd of=/dev/vda conv=fsync; then echo RO_WRITE_SUCCEEDED; else echo RO_WRITE_FAILED; fi\"' \
          ', "drives": [{"drive_id": "ro-data", "path_on_host": "/tmp/ro.img", "is_root_device": false, "is_read_only": true}]'
        after=$(sha256sum /tmp/ro.img)
        [ "$before" = "$after" ] && echo RO_IMAGE_UNCHANGED
        "#,
        &[],
    );
    let case = run.case("ro");
    assert!(case.console_line("serial=ro-data"), "{case:#?}");
    assert!(case.console_line("ro=1"), "{case:#?}");
    assert!(case.console_line("data=BRIQUE-RO-DATA"), "{case:#?}");
    assert!(case.console_line("RO_WRITE_FAILED"), "{case:#?}");
    assert!(!case.console_line("RO_WRITE_SUCCEEDED"), "{case:#?}");
    assert_eq!(case.exit, 0, "{case:#?}");
    assert!(
        run.console.contains("RO_IMAGE_UNCHANGED"),
        "{}",
        run.console
    );
}

fn flushed_data_survives_kill_9_of_brique(arch: HostArch) {
    let run = run_in_test_host_on(
        arch,
        r#"
        dd if=/dev/zero of=/tmp/data.img bs=1M count=4 2>/dev/null
        cat > /tmp/kill.json <<JSON
{
  "boot-source": {
    "kernel_image_path": "$GUEST_KERNEL",
    "initrd_path": "$GUEST_INITRAMFS",
    "boot_args": "$DEFAULT_ARGS brique_action=hold brique_run=\"printf DURABLE-PAYLOAD-42 | dd of=/dev/vda conv=fsync && echo FLUSHED_MARKER\""
  },
  "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
  "drives": [{"drive_id": "data", "path_on_host": "/tmp/data.img", "is_root_device": false,
              "is_read_only": false, "cache_type": "Writeback"}]
}
JSON
        "$BRIQUE" --no-api --config-file /tmp/kill.json < /dev/null > /tmp/kill.out 2>&1 &
        pid=$!
        wait_for_line /tmp/kill.out FLUSHED_MARKER "$pid" 120
        kill -9 "$pid"
        wait "$pid"
        echo "KILLED status=$?"
        grep -q '^FLUSHED_MARKER' /tmp/kill.out && echo "GUEST_FLUSHED"
        echo "ON_DISK: $(head -c 18 /tmp/data.img)"
        "#,
        &[],
    );
    assert!(run.console.contains("GUEST_FLUSHED"), "{}", run.console);
    assert!(run.console.contains("KILLED status=137"), "{}", run.console);
    assert!(
        run.console.contains("ON_DISK: DURABLE-PAYLOAD-42"),
        "{}",
        run.console
    );
}

// Each case on each test host it applies to (the same script on both).
on_test_hosts!(guest_writes_to_its_root_disk_and_the_host_reads_them_back_with_two_drives on X86_64, Aarch64);
on_test_hosts!(read_only_drive_is_readable_not_writable_and_unchanged on X86_64, Aarch64);
on_test_hosts!(flushed_data_survives_kill_9_of_brique on X86_64, Aarch64);
