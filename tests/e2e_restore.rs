//! End-to-end snapshot and restore on the arm64 test host: a 2-vCPU guest
//! counting every 100 ms is paused, snapshotted, its brique killed with
//! `kill -9`, and a new brique loads the snapshot: the count goes on from
//! where it stopped, with no boot messages. (On x86_64, tests/e2e_snapshot.rs
//! covers this and more: disks, network, diffs, clones, the clock.)

use brique_tests::console::leading_count;
use brique_tests::{on_test_hosts, run_in_test_host_on, HostArch};

const SCRIPT: &str = r#"
api() { curl -s -S -w ' HTTP=%{http_code}' --unix-socket "$1" -X "$2" -H 'Content-Type: application/json' ${4:+--data "$4"} "http://localhost$3"; echo; }
run='i=0; while true; do echo COUNT=$i; i=$((i+1)); usleep 100000; done'
cat > /tmp/vm.json <<JSON
{"boot-source": {"kernel_image_path": "$GUEST_KERNEL", "initrd_path": "$GUEST_INITRAMFS",
  "boot_args": "$DEFAULT_ARGS quiet brique_action=hold brique_run=\"$run\""},
 "machine-config": {"vcpu_count": 2, "mem_size_mib": 128}}
JSON
"$BRIQUE" --config-file /tmp/vm.json --api-sock /tmp/a.sock < /dev/null > /tmp/a.out 2> /tmp/a.err &
pid=$!
wait_for_line /tmp/a.out COUNT=20 $pid 240 || { echo NEVER_COUNTED; tail -20 /tmp/a.out; cat /tmp/a.err; }
echo "PAUSE $(api /tmp/a.sock PATCH /vm '{"state": "Paused"}')"
echo "CREATE $(api /tmp/a.sock PUT /snapshot/create '{"snapshot_path": "/tmp/vm.snap", "mem_file_path": "/tmp/vm.mem"}')"
kill -9 $pid
"$BRIQUE" --api-sock /tmp/b.sock < /dev/null > /tmp/b.out 2> /tmp/b.err &
pid2=$!
n=0; while [ ! -S /tmp/b.sock ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n+1)); done
echo "LOAD $(api /tmp/b.sock PUT /snapshot/load '{"snapshot_path": "/tmp/vm.snap", "mem_backend": {"backend_type": "File", "backend_path": "/tmp/vm.mem"}, "resume_vm": true}')"
echo "STATE $(api /tmp/b.sock GET /)"
sleep 3
# The restored guest stops before its console is read: the two readings
# below must see the same console (one taken a count later than the other
# made the saved part look one count longer).
kill -9 $pid2; wait $pid2 2> /dev/null
echo "RESTORED_COUNTS $(grep -a '^COUNT=' /tmp/b.out | tr '\n' ' ')"
echo "JOINED_COUNTS $(cat /tmp/a.out /tmp/b.out | grep -a '^COUNT=' | tr '\n' ' ')"
echo "RESTORED_BOOT_MESSAGES $(grep -a -c -e 'Linux version' -e BRIQUE_GUEST_INIT_OK /tmp/b.out)"
sed 's/^/[stderr] /' /tmp/b.err | tail -5
"#;

fn value_after<'a>(console: &'a str, prefix: &str) -> &'a str {
    console
        .lines()
        .find_map(|line| line.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{console}"))
        .trim()
}

/// The numbers of a line of `COUNT=<n>` words.
fn counts(words: &str) -> Vec<u64> {
    words
        .split_whitespace()
        .filter_map(|count| leading_count(count.strip_prefix("COUNT=")?))
        .collect()
}

fn counter_goes_on_after_kill_9_and_restore(arch: HostArch) {
    let run = run_in_test_host_on(arch, SCRIPT, &[]);
    let console = &run.console;
    let log = run.console_log.display();
    for step in ["PAUSE ", "CREATE ", "LOAD "] {
        assert!(
            value_after(console, step).ends_with("HTTP=204"),
            "{step}failed (console kept in {log}):\n{console}"
        );
    }
    assert!(value_after(console, "STATE ").contains(r#""state":"Running""#));
    // The pause can come while the guest is in the middle of a line: the
    // saved console then ends with a partial line ("COUNT=2" of "COUNT=28")
    // that the restored guest finishes ("8"). So the count is checked over
    // the saved console followed by the restored one.
    let restored = counts(value_after(console, "RESTORED_COUNTS "));
    let joined = counts(value_after(console, "JOINED_COUNTS "));
    assert!(
        restored.len() >= 10,
        "the restored guest counts on (console kept in {log}):\n{console}"
    );
    let expected: Vec<u64> = (0..).take(joined.len()).collect();
    assert_eq!(
        joined, expected,
        "one count from 0, without a gap or a repeat, across the restore (console kept in {log})"
    );
    let saved = joined.len() - restored.len().min(joined.len());
    assert!(
        saved > 20 && joined[saved..] == restored[..],
        "the restored guest goes on from the saved one's last count ({saved} before; console \
         kept in {log}):\n{console}"
    );
    assert_eq!(value_after(console, "RESTORED_BOOT_MESSAGES "), "0");
}

on_test_hosts!(counter_goes_on_after_kill_9_and_restore on Aarch64);
