//! End-to-end snapshot and restore (x86_64): real Linux guests in the
//! test host, driven with `curl --unix-socket` only, in one test host run:
//!
//! - A (2 vCPUs, an ext4 data drive, a tap, dirty page tracking) prints a
//!   counter from each vCPU every 100 ms. Paused, a Full snapshot; resumed,
//!   changed (a tmpfs file, a page cache refilled by the drive, pings);
//!   paused, a Diff over a copy of the Full memory file; `kill -9`.
//! - B loads the Full snapshot in a new brique and resumes: both counters
//!   go on from the next value, no boot messages, the file written before is
//!   there, the disk takes a new file (read back by the host with debugfs),
//!   ping works both ways, the guest clock did not jump past the pause.
//! - C loads the Diff (paused, then resumed): the later state (the tmpfs
//!   file, the page cache the drive filled after the Full, the counters).
//! - F loads the Diff again while the host pings the guest 100 times a
//!   second, so that frames reach the restored virtio-net device during the
//!   load: the guest must still answer ping right after it.
//! - D (1 vCPU, network only, no dirty page tracking) is snapshotted once,
//!   and E1 and E2 load it at the same time, each on its own tap
//!   (`network_overrides`), E1 with `clock_realtime`: both run, both answer
//!   ping on their own tap. (The test host's own clock source is not the
//!   TSC, so KVM saves no wall-clock stamp with the clock and
//!   `clock_realtime` changes nothing there: for both, only that the guest
//!   clock moved no more than the host's is checked.)
//! - Refusals: a snapshot of a running VM, a load into a running brique, a
//!   Diff without dirty page tracking (400, nothing written).
//!
//! The guest reads shell commands from its console (brique's stdin, a FIFO
//! kept open), so that the restored guests can be told what to do.
#![cfg(target_arch = "x86_64")]

use brique_tests::console::leading_count;
use brique_tests::{run_in_test_host, skip_e2e, HostRun};

/// What every guest runs (kernel command line: no double quotes). `guest_ip`
/// comes from the command line too. With a drive it mounts it, writes a
/// file and a 1 MiB random blob; one counter per vCPU, each pinned to its
/// vCPU, prints `TICK<cpu> <n>` every 100 ms; then it runs what comes on
/// its console, line by line, without echo.
const GUEST: &str = "ip addr add $guest_ip/24 dev eth0; ip link set eth0 up; \
if [ -b /dev/vda ]; then mkdir -p /mnt; mount -o noatime /dev/vda /mnt; \
dd if=/dev/urandom of=/mnt/blob bs=64k count=16 2>/dev/null; \
echo before-snapshot > /mnt/before.txt; sync; echo BLOB1 $(sha256sum < /mnt/blob); fi; \
for c in $(seq 0 $(($(nproc) - 1))); do \
taskset -c $c sh -c 'i=0; while true; do echo TICK'$c' $i; i=$((i+1)); usleep 100000; done' & done; \
echo CLOCKSOURCE $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource); \
stty -echo; set -f; echo GUEST_READY; while read -r c; do eval $c; done";

/// The test host side: every API call is printed as `API <label>: <body>
/// HTTP=<code>`, host wall times as `HOSTTIME <label> <seconds>`, each
/// guest console as `[<vm>] <line>`, and a restored guest's console after
/// the console of the guest it was saved from as `[<from>+<vm>] <line>`.
const SCRIPT: &str = r#"
api() { # LABEL VM METHOD PATH [BODY]
    out=$(curl -s -S -w ' HTTP=%{http_code}' --unix-socket "/tmp/$2.sock" -X "$3" \
        -H 'Content-Type: application/json' ${5:+--data "$5"} "http://localhost$4" 2>&1)
    echo "API $1: $out"
}
hnow() { echo "HOSTTIME $1 $(date +%s)"; }
pid_of() { eval "echo \$pid_$1"; }
# start_brique VM [ARGS...]: a brique with its API socket and a console
# input FIFO that a sleeping holder keeps open (no EOF between commands).
start_brique() {
    vm=$1; shift
    rm -f "/tmp/$vm.in" "/tmp/$vm.sock" && mkfifo "/tmp/$vm.in"
    sleep 100000 <> "/tmp/$vm.in" > /dev/null 2>&1 &
    "$BRIQUE" --api-sock "/tmp/$vm.sock" "$@" < "/tmp/$vm.in" > "/tmp/$vm.out" 2> "/tmp/$vm.err" &
    eval "pid_$vm=$!"
    n=0; while [ ! -S "/tmp/$vm.sock" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
}
say() { printf '%s\n' "$2" > "/tmp/$1.in"; }
wait_for() { # VM PREFIX [SECONDS]
    wait_for_line "/tmp/$1.out" "$2" "$(pid_of "$1")" "${3:-60}" || echo "WAIT_FAILED $1 $2"
}
# still VM: whether the console stayed silent for a second.
still() {
    sleep 0.3; a=$(wc -c < "/tmp/$1.out"); sleep 1; b=$(wc -c < "/tmp/$1.out")
    if [ "$a" = "$b" ]; then echo "STILL $1"; else echo "MOVED $1 $a -> $b"; fi
}
kill9() {
    pid=$(pid_of "$1"); kill -0 "$pid" 2>/dev/null && echo "ALIVE $1"
    kill -9 "$pid"; wait "$pid"; echo "KILLED $1 status=$?"
}
# prefix TAG: each line of stdin as "[TAG] line", the last one too when it
# was cut short (a killed guest's console ends mid-line).
prefix() { awk -v tag="[$1] " '{ gsub(/\r/, ""); print tag $0 }'; }
# complete_lines FILE: FILE without a last line the guest had not finished
# (a brique killed with -9 while the guest was printing it).
complete_lines() { if [ -n "$(tail -c 1 "$1")" ]; then sed '$d' "$1"; else cat "$1"; fi; }
show() { complete_lines "/tmp/$1.out" | prefix "$1"; prefix "$1:stderr" < "/tmp/$1.err"; }
# show_joined SAVED VM LABEL: the console saved at the snapshot, then the
# restored VM's (a line cut by the snapshot goes on in the second).
show_joined() { cat "/tmp/$1" "/tmp/$2.out" > /tmp/joined; complete_lines /tmp/joined | prefix "$3"; }
# ping_vm VM TAP IP LABEL: pings the guest; when it does not answer, says
# where the packets stop: the host tap's counters, brique's device counters
# (metrics), the guest's interface counters and interrupts, twice.
ping_vm() {
    if ping -c 2 -W 5 "$3" > /dev/null; then echo "PING_$4_OK"; return; fi
    echo "PING_$4_FAILED"
    api "diag_metrics_$4" "$1" PUT /metrics "{\"metrics_path\": \"/tmp/$1.metrics\"}"
    for round in 1 2; do
        echo "DIAG $4 round $round: host $2 rx=$(cat /sys/class/net/$2/statistics/rx_packets) tx=$(cat /sys/class/net/$2/statistics/tx_packets)"
        api "diag_flush_$4_$round" "$1" PUT /actions '{"action_type": "FlushMetrics"}'
        echo "DIAG $4 round $round: brique $(tail -n 1 /tmp/$1.metrics)"
        say "$1" "echo DIAG_$4_$round rx=\$(cat /sys/class/net/eth0/statistics/rx_packets) tx=\$(cat /sys/class/net/eth0/statistics/tx_packets) irqs=\$(grep virtio /proc/interrupts | tr -s ' ' | tr '\n' '|'); ip neigh; dmesg | tail -n 3"
        wait_for "$1" "DIAG_$4_$round" 20
        ping -c 2 -W 2 "$3" > /dev/null && echo "DIAG $4 round $round: ping answered"
    done
}
load_body() { # SNAPSHOT MEMORY RESUME [EXTRA]
    echo "{\"snapshot_path\": \"$1\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$2\"}, \"resume_vm\": $3$4}"
}
ARGS="$DEFAULT_ARGS brique_action=hold"
RUN="brique_run=\\\"$(cat guest.sh)\\\""
tap() { tunctl -t "$1" > /dev/null; ip addr add "$2" dev "$1"; ip link set "$1" up; }
tap tap0 172.16.0.1/24
tap tapsrc 172.16.2.1/24
tap tapc1 172.16.3.1/24
tap tapc2 172.16.4.1/24
cp "$GUEST_ROOTFS" /tmp/data.ext4

echo "=== A: boot, refusals, Full, change, Diff, kill -9"
cat > /tmp/A.json <<JSON
{
  "boot-source": {"kernel_image_path": "$GUEST_VMLINUX", "initrd_path": "$GUEST_INITRAMFS",
                  "boot_args": "$ARGS guest_ip=172.16.0.2 $RUN"},
  "machine-config": {"vcpu_count": 2, "mem_size_mib": 128, "track_dirty_pages": true},
  "drives": [{"drive_id": "data", "path_on_host": "/tmp/data.ext4", "is_root_device": false}],
  "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"}]
}
JSON
start_brique A --config-file /tmp/A.json
wait_for A GUEST_READY 240
api create_running A PUT /snapshot/create '{"snapshot_type": "Full", "snapshot_path": "/tmp/never.snap", "mem_file_path": "/tmp/never.mem"}'
[ -e /tmp/never.snap ] || [ -e /tmp/never.mem ] || echo NOTHING_WRITTEN_WHILE_RUNNING
api load_running A PUT /snapshot/load "$(load_body /tmp/never.snap /tmp/never.mem true)"
ping_vm A tap0 172.16.0.2 A
sleep 2
hnow A_GDATE
say A 'echo GDATE_A $(date +%s)'
wait_for A GDATE_A
api pause_A A PATCH /vm '{"state": "Paused"}'
hnow A_PAUSED
still A
api full_A A PUT /snapshot/create '{"snapshot_type": "Full", "snapshot_path": "/tmp/s1.snap", "mem_file_path": "/tmp/s1.mem"}'
hnow A_FULL_DONE
api state_after_full A GET /
cp /tmp/A.out /tmp/A-s1.out
api resume_A A PATCH /vm '{"state": "Resumed"}'
say A 'echo STATE=two > /tmp/state; echo 3 > /proc/sys/vm/drop_caches; echo BLOB2 $(sha256sum < /mnt/blob)'
wait_for A BLOB2
ping_vm A tap0 172.16.0.2 A2
sleep 1
api pause_A2 A PATCH /vm '{"state": "Paused"}'
still A
cp /tmp/A.out /tmp/A-s2.out
cp /tmp/data.ext4 /tmp/disk-s2.ext4
cp /tmp/s1.mem /tmp/s2.mem
api diff_A A PUT /snapshot/create '{"snapshot_type": "Diff", "snapshot_path": "/tmp/s2.snap", "mem_file_path": "/tmp/s2.mem"}'
hnow A_DIFF_DONE
echo "MEMFILES $(ls -ls /tmp/s1.mem /tmp/s2.mem /tmp/s1.snap /tmp/s2.snap | tr '\n' ' ')"
kill9 A
sleep 5

echo "=== B: load the Full, resume"
start_brique B
hnow B_LOAD
api load_B B PUT /snapshot/load "$(load_body /tmp/s1.snap /tmp/s1.mem true)"
hnow B_LOADED
api state_B B GET /
say B 'echo GDATE_B $(date +%s)'
wait_for B GDATE_B
hnow B_GDATE
ping_vm B tap0 172.16.0.2 B
say B 'ping -c 1 -W 5 172.16.0.1 > /dev/null && echo GUEST_PING_B_OK; echo READ_B $(cat /mnt/before.txt); echo STATE_B $(cat /tmp/state 2>/dev/null || echo none); echo BLOB_B $(sha256sum < /mnt/blob)'
wait_for B BLOB_B
say B 'echo after-restore > /mnt/after.txt && sync && umount /mnt && mount /dev/vda /mnt && echo REREAD_B $(cat /mnt/after.txt) && umount /mnt && echo UMOUNTED_B'
wait_for B UMOUNTED_B
api config_B B GET /vm/config
sleep 1
kill9 B
debugfs -R 'cat /after.txt' /tmp/data.ext4 2>/dev/null | sed 's/^/HOST_READ: /'

echo "=== C: load the Diff (paused), resume"
cp /tmp/disk-s2.ext4 /tmp/data.ext4
start_brique C
api load_C C PUT /snapshot/load "$(load_body /tmp/s2.snap /tmp/s2.mem false)"
api state_C C GET /
still C
api resume_C C PATCH /vm '{"state": "Resumed"}'
say C 'echo STATE_C $(cat /tmp/state); echo BLOB_C $(sha256sum < /mnt/blob)'
wait_for C BLOB_C
ping_vm C tap0 172.16.0.2 C
sleep 1
kill9 C

echo "=== F: load the Diff again while frames keep coming on its tap"
cp /tmp/disk-s2.ext4 /tmp/data.ext4
# A static ARP entry (busybox's ip cannot add one): the pings leave as soon
# as the tap has a reader again, with no ARP round first.
arp -i tap0 -s 172.16.0.2 06:00:ac:10:00:02
(while :; do ping -q -w 1 -i 0.01 172.16.0.2 > /dev/null 2>&1; done) &
pinger=$!
sleep 1
start_brique F
echo "TAP_F before $(cat /sys/class/net/tap0/statistics/tx_packets)"
api load_F F PUT /snapshot/load "$(load_body /tmp/s2.snap /tmp/s2.mem true)"
sleep 2
kill $pinger
echo "TAP_F after $(cat /sys/class/net/tap0/statistics/tx_packets)"
sleep 1.5
ping_vm F tap0 172.16.0.2 F
say F 'echo F_RUNS'
wait_for F F_RUNS
sleep 1
kill9 F

echo "=== D: boot, Full, kill -9; E1 and E2: two clones at once"
cat > /tmp/D.json <<JSON
{
  "boot-source": {"kernel_image_path": "$GUEST_VMLINUX", "initrd_path": "$GUEST_INITRAMFS",
                  "boot_args": "$ARGS guest_ip=172.16.2.2 $RUN"},
  "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
  "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tapsrc", "guest_mac": "06:00:ac:10:02:02"}]
}
JSON
start_brique D --config-file /tmp/D.json
wait_for D GUEST_READY 240
ping_vm D tapsrc 172.16.2.2 D
sleep 1
hnow D_GDATE
say D 'echo GDATE_D $(date +%s)'
wait_for D GDATE_D
api pause_D D PATCH /vm '{"state": "Paused"}'
hnow D_PAUSED
still D
api diff_untracked D PUT /snapshot/create '{"snapshot_type": "Diff", "snapshot_path": "/tmp/never.snap", "mem_file_path": "/tmp/never.mem"}'
[ -e /tmp/never.snap ] || [ -e /tmp/never.mem ] || echo NOTHING_WRITTEN_UNTRACKED
api full_D D PUT /snapshot/create '{"snapshot_type": "Full", "snapshot_path": "/tmp/s3.snap", "mem_file_path": "/tmp/s3.mem"}'
cp /tmp/D.out /tmp/D-s3.out
kill9 D
sleep 5
start_brique E1
start_brique E2
hnow E_LOAD
api load_E1 E1 PUT /snapshot/load "$(load_body /tmp/s3.snap /tmp/s3.mem true ', "clock_realtime": true, "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tapc1"}]')"
api load_E2 E2 PUT /snapshot/load "$(load_body /tmp/s3.snap /tmp/s3.mem true ', "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tapc2"}]')"
hnow E_LOADED
say E1 'ip addr add 172.16.3.2/24 dev eth0; echo GDATE_E1 $(date +%s); echo CLONE_E1_READY'
say E2 'ip addr add 172.16.4.2/24 dev eth0; echo GDATE_E2 $(date +%s); echo CLONE_E2_READY'
wait_for E1 CLONE_E1_READY
hnow E1_GDATE
wait_for E2 CLONE_E2_READY
hnow E2_GDATE
ping_vm E1 tapc1 172.16.3.2 E1
ping_vm E2 tapc2 172.16.4.2 E2
api config_E1 E1 GET /vm/config
api config_E2 E2 GET /vm/config
sleep 2
kill9 E1
kill9 E2

show A; show B; show C; show F; show D; show E1; show E2
show_joined A-s1.out B A+B
show_joined A-s2.out C A+C
show_joined A-s2.out F A+F
show_joined D-s3.out E1 D+E1
show_joined D-s3.out E2 D+E2
"#;

/// Failed checks, collected so that one run reports every one of them.
#[derive(Debug, Default)]
struct Checks {
    failed: Vec<String>,
}

impl Checks {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.failed.push(what.into());
        }
    }
}

/// Reads what the test host printed.
#[derive(Debug)]
struct Output<'a> {
    run: &'a HostRun,
}

impl Output<'_> {
    fn has_line(&self, text: &str) -> bool {
        self.run.console.lines().any(|l| l.trim_end() == text)
    }

    /// The answer to the API call `label`, ending in ` HTTP=<code>`.
    fn api(&self, label: &str) -> String {
        let prefix = format!("API {label}: ");
        self.run
            .console
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or("(no such call)")
            .trim_end()
            .to_owned()
    }

    fn host_time(&self, label: &str) -> Option<i64> {
        let prefix = format!("HOSTTIME {label} ");
        self.run
            .console
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|t| t.trim().parse().ok())
    }

    /// The console lines of `vm` (`[vm] ` stripped).
    fn stream(&self, vm: &str) -> Vec<&str> {
        let prefix = format!("[{vm}] ");
        self.run
            .console
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(str::trim_end)
            .collect()
    }
}

/// What follows `key ` on the first line of `stream` starting with it.
fn value<'a>(stream: &[&'a str], key: &str) -> Option<&'a str> {
    let prefix = format!("{key} ");
    stream
        .iter()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(str::trim)
}

fn guest_time(stream: &[&str], key: &str) -> Option<i64> {
    value(stream, key).and_then(|t| t.parse().ok())
}

/// The values of `TICK<cpu>` lines in `stream`, in order.
fn ticks(stream: &[&str], cpu: u32) -> Vec<u64> {
    let prefix = format!("TICK{cpu} ");
    stream
        .iter()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(leading_count)
        .collect()
}

/// Checks that `TICK<cpu>` counts 0, 1, 2... without a gap or a repeat
/// through the saved guest's console and then the restored one's
/// (`joined`), and that the restored guest (`restored`) counted at least
/// `min_new` times.
fn check_counter(
    checks: &mut Checks,
    joined: &[&str],
    restored: &[&str],
    cpu: u32,
    min_new: usize,
    what: &str,
) {
    let all = ticks(joined, cpu);
    let new = ticks(restored, cpu);
    let first_new = new.first().copied();
    eprintln!(
        "{what}: TICK{cpu} {} values in all, {} after the restore, first {first_new:?}, last {:?}",
        all.len(),
        new.len(),
        new.last()
    );
    checks.check(
        all.first() == Some(&0),
        format!("{what}: TICK{cpu} does not start at 0"),
    );
    // The guest writes each line at once; a line mangled where the saved
    // console ends and the restored one begins means bytes went to the
    // console twice or never across the snapshot.
    let tick = format!("TICK{cpu} ");
    for line in joined
        .iter()
        .filter(|l| l.contains(&tick) && !l.starts_with(&tick))
    {
        checks.check(
            false,
            format!(
                "{what}: mangled console line {line:?} where the restored console \
                 continues the saved one (a byte written twice or lost?)"
            ),
        );
    }
    if let Some(pos) = all.windows(2).position(|w| w[1] != w[0] + 1) {
        checks.check(
            false,
            format!(
                "{what}: TICK{cpu} goes {} -> {} (around {:?})",
                all[pos],
                all[pos + 1],
                &all[pos.saturating_sub(3)..(pos + 4).min(all.len())]
            ),
        );
    }
    checks.check(
        new.len() >= min_new,
        format!(
            "{what}: the restored guest printed {} TICK{cpu} lines, not {min_new} or more",
            new.len()
        ),
    );
    checks.check(
        first_new.is_some_and(|n| n > 0),
        format!("{what}: TICK{cpu} restarted at {first_new:?} after the restore"),
    );
}

/// A restored guest's console: no boot, and nothing the kernel complains of.
fn check_restored_console(checks: &mut Checks, stream: &[&str], vm: &str) {
    for needle in ["Linux version", "BRIQUE_GUEST_INIT_OK", "GUEST_READY"] {
        checks.check(
            !stream.iter().any(|l| l.contains(needle)),
            format!("{vm}: the restored console shows {needle:?} (a boot?)"),
        );
    }
    for needle in [
        "BUG",
        "WARNING",
        "Oops",
        "stall",
        "lockup",
        "Call Trace",
        "panic",
        "unstable",
    ] {
        if let Some(line) = stream.iter().find(|l| l.contains(needle)) {
            checks.check(false, format!("{vm}: the guest kernel says {line:?}"));
        }
    }
}

/// The clock: the guest's wall time after the restore minus before the
/// pause (both from `date +%s`) against the host's wall time over the same
/// span. Returns the guest's and the host's deltas.
fn clock_deltas(
    out: &Output<'_>,
    checks: &mut Checks,
    before: (&[&str], &str, &str),
    after: (&[&str], &str, &str),
) -> Option<(i64, i64)> {
    let guest_before = guest_time(before.0, before.1);
    let guest_after = guest_time(after.0, after.1);
    let host_before = out.host_time(before.2);
    let host_after = out.host_time(after.2);
    let (Some(g1), Some(g2), Some(h1), Some(h2)) =
        (guest_before, guest_after, host_before, host_after)
    else {
        checks.check(
            false,
            format!(
                "clock: missing a time ({}={guest_before:?}, {}={guest_after:?}, \
                 {}={host_before:?}, {}={host_after:?})",
                before.1, after.1, before.2, after.2
            ),
        );
        return None;
    };
    Some((g2 - g1, h2 - h1))
}

#[test]
fn snapshot_restore_diff_and_clones_of_real_guests() {
    if skip_e2e() {
        return;
    }
    let run = run_in_test_host(SCRIPT, &[("guest.sh", GUEST.as_bytes())]);
    let out = Output { run: &run };
    let mut checks = Checks::default();
    for line in run.console.lines().filter(|l| {
        l.starts_with("API ")
            || l.starts_with("HOSTTIME ")
            || l.starts_with("WAIT_FAILED")
            || l.starts_with("STILL ")
            || l.starts_with("MOVED ")
            || l.starts_with("KILLED ")
            || l.starts_with("ALIVE ")
            || l.starts_with("MEMFILES ")
            || l.starts_with("HOST_READ")
            || l.starts_with("PING_")
            || l.starts_with("NOTHING_")
            || l.starts_with("===")
            || l.starts_with("DIAG")
            || l.starts_with("TAP_F")
    }) {
        eprintln!("{line}");
    }
    let a = out.stream("A");
    let b = out.stream("B");
    let c = out.stream("C");
    let d = out.stream("D");
    let e1 = out.stream("E1");
    let e2 = out.stream("E2");
    eprintln!(
        "guest clock source: {:?}",
        value(&a, "CLOCKSOURCE").unwrap_or("unknown")
    );
    for line in run.console.lines().filter(|l| l.starts_with("WAIT_FAILED")) {
        checks.check(false, format!("the script waited in vain: {line}"));
    }
    checks.check(a.contains(&"GUEST_READY"), "A never got ready");
    checks.check(d.contains(&"GUEST_READY"), "D never got ready");

    // Refusals.
    let refused = |out: &Output<'_>, checks: &mut Checks, label: &str, needle: &str| {
        let answer = out.api(label);
        checks.check(
            answer.ends_with("HTTP=400") && answer.contains(needle),
            format!("{label}: expected a 400 naming {needle:?}, got {answer}"),
        );
    };
    refused(&out, &mut checks, "create_running", "Paused");
    checks.check(
        out.has_line("NOTHING_WRITTEN_WHILE_RUNNING"),
        "a refused create wrote files",
    );
    refused(&out, &mut checks, "load_running", "fresh brique");
    refused(&out, &mut checks, "diff_untracked", "track_dirty_pages");
    checks.check(
        out.has_line("NOTHING_WRITTEN_UNTRACKED"),
        "a refused Diff wrote files",
    );

    // A: the snapshots were taken, paused and quiet.
    for label in [
        "pause_A", "full_A", "resume_A", "pause_A2", "diff_A", "pause_D", "full_D",
    ] {
        let answer = out.api(label);
        checks.check(answer.ends_with("HTTP=204"), format!("{label}: {answer}"));
    }
    checks.check(
        out.api("state_after_full").contains(r#""state":"Paused""#),
        format!("after the Full: {}", out.api("state_after_full")),
    );
    for vm in ["A", "D"] {
        checks.check(
            out.has_line(&format!("STILL {vm}")),
            format!("{vm} printed while paused"),
        );
    }
    checks.check(out.has_line("PING_A_OK"), "A did not answer ping");
    checks.check(
        out.has_line("PING_A2_OK"),
        "A did not answer ping after resume",
    );
    for vm in ["A", "B", "C", "F", "D", "E1", "E2"] {
        checks.check(
            out.has_line(&format!("ALIVE {vm}")),
            format!("{vm} had ended before its kill -9"),
        );
        checks.check(
            out.has_line(&format!("KILLED {vm} status=137")),
            format!("{vm}: no kill -9 status"),
        );
    }

    // B: restored from the Full in a new process, and resumed.
    let ab = out.stream("A+B");
    checks.check(
        out.api("load_B").ends_with("HTTP=204"),
        format!("load_B: {}", out.api("load_B")),
    );
    checks.check(
        out.api("state_B").contains(r#""state":"Running""#),
        format!("state_B: {}", out.api("state_B")),
    );
    check_counter(&mut checks, &ab, &b, 0, 5, "B (from the Full)");
    check_counter(&mut checks, &ab, &b, 1, 5, "B (from the Full)");
    check_restored_console(&mut checks, &b, "B");
    checks.check(out.has_line("PING_B_OK"), "B did not answer ping");
    checks.check(b.contains(&"GUEST_PING_B_OK"), "B could not ping the host");
    checks.check(
        value(&b, "READ_B") == Some("before-snapshot"),
        format!("B read {:?} from the drive", value(&b, "READ_B")),
    );
    checks.check(
        value(&b, "STATE_B") == Some("none"),
        format!(
            "B has the state written after the Full: {:?}",
            value(&b, "STATE_B")
        ),
    );
    let blob = value(&a, "BLOB1");
    checks.check(blob.is_some(), "A did not hash its blob");
    checks.check(
        value(&a, "BLOB2") == blob,
        format!("A's blob read back {:?}, not {blob:?}", value(&a, "BLOB2")),
    );
    checks.check(
        value(&b, "BLOB_B") == blob,
        format!("B's blob {:?}, not {blob:?}", value(&b, "BLOB_B")),
    );
    checks.check(
        value(&b, "REREAD_B") == Some("after-restore") && b.contains(&"UMOUNTED_B"),
        format!(
            "B's new file read back as {:?}; unmounted: {}",
            value(&b, "REREAD_B"),
            b.contains(&"UMOUNTED_B")
        ),
    );
    checks.check(
        out.has_line("HOST_READ: after-restore"),
        "the host did not find B's new file on the disk image",
    );
    let config_b = out.api("config_B");
    checks.check(
        config_b.contains("/tmp/data.ext4") && config_b.contains("tap0"),
        format!("B's configuration is not the snapshot's: {config_b}"),
    );
    if let Some((guest, host)) = clock_deltas(
        &out,
        &mut checks,
        (&a, "GDATE_A", "A_GDATE"),
        (&b, "GDATE_B", "B_GDATE"),
    ) {
        let pause = out.host_time("B_LOADED").unwrap_or(0) - out.host_time("A_PAUSED").unwrap_or(0);
        eprintln!("clock A->B: guest +{guest} s, host +{host} s (VM stopped for {pause} s)");
        checks.check(
            (0..=host + 2).contains(&guest),
            format!(
                "clock A->B: the guest's clock moved {guest} s while the host's moved {host} s"
            ),
        );
    }

    // C: restored from the Diff, loaded paused.
    let ac = out.stream("A+C");
    checks.check(
        out.api("load_C").ends_with("HTTP=204"),
        format!("load_C: {}", out.api("load_C")),
    );
    checks.check(
        out.api("state_C").contains(r#""state":"Paused""#),
        format!("state_C: {}", out.api("state_C")),
    );
    checks.check(out.has_line("STILL C"), "C printed before it was resumed");
    checks.check(
        out.api("resume_C").ends_with("HTTP=204"),
        format!("resume_C: {}", out.api("resume_C")),
    );
    check_counter(&mut checks, &ac, &c, 0, 5, "C (from the Diff)");
    check_counter(&mut checks, &ac, &c, 1, 5, "C (from the Diff)");
    check_restored_console(&mut checks, &c, "C");
    checks.check(
        value(&c, "STATE_C") == Some("STATE=two"),
        format!("C's state: {:?} (not the Diff's)", value(&c, "STATE_C")),
    );
    checks.check(
        value(&c, "BLOB_C") == blob,
        format!(
            "C's blob (page cache refilled by the drive between Full and Diff) {:?}, not {blob:?}",
            value(&c, "BLOB_C")
        ),
    );
    checks.check(out.has_line("PING_C_OK"), "C did not answer ping");

    // F: the Diff loaded again while the host keeps pinging the guest, so
    // that frames reach the restored virtio-net device while the load is
    // still under way: the guest must still get every interrupt.
    let f = out.stream("F");
    let af = out.stream("A+F");
    checks.check(
        out.api("load_F").ends_with("HTTP=204"),
        format!("load_F: {}", out.api("load_F")),
    );
    check_counter(
        &mut checks,
        &af,
        &f,
        0,
        5,
        "F (from the Diff, frames arriving)",
    );
    check_restored_console(&mut checks, &f, "F");
    checks.check(f.contains(&"F_RUNS"), "F did not run its command");
    checks.check(
        out.has_line("PING_F_OK"),
        "F (loaded while frames arrived on its tap) did not answer ping",
    );

    // E1 and E2: two clones of D at once, each on its own tap.
    checks.check(out.has_line("PING_D_OK"), "D did not answer ping");
    for (vm, tap, stream, realtime) in [("E1", "tapc1", &e1, true), ("E2", "tapc2", &e2, false)] {
        let load = out.api(&format!("load_{vm}"));
        checks.check(load.ends_with("HTTP=204"), format!("load_{vm}: {load}"));
        let joined = out.stream(&format!("D+{vm}"));
        check_counter(&mut checks, &joined, stream, 0, 5, &format!("{vm} (clone)"));
        check_restored_console(&mut checks, stream, vm);
        checks.check(
            stream.contains(&format!("CLONE_{vm}_READY").as_str()),
            format!("{vm} did not run its command"),
        );
        checks.check(
            out.has_line(&format!("PING_{vm}_OK")),
            format!("{vm} did not answer ping on {tap}"),
        );
        let config = out.api(&format!("config_{vm}"));
        checks.check(
            config.contains(tap),
            format!("{vm}'s configuration does not name {tap}: {config}"),
        );
        let gdate = format!("GDATE_{vm}");
        let hdate = format!("{vm}_GDATE");
        if let Some((guest, host)) = clock_deltas(
            &out,
            &mut checks,
            (&d, "GDATE_D", "D_GDATE"),
            (stream, &gdate, &hdate),
        ) {
            let pause =
                out.host_time("E_LOADED").unwrap_or(0) - out.host_time("D_PAUSED").unwrap_or(0);
            eprintln!(
                "clock D->{vm} (clock_realtime {realtime}): guest +{guest} s, host +{host} s \
                 (VM stopped for about {pause} s)"
            );
            checks.check(
                (0..=host + 2).contains(&guest),
                format!("clock D->{vm}: the guest's clock moved {guest} s while the host's moved {host} s"),
            );
        }
    }

    assert!(
        checks.failed.is_empty(),
        "{} check(s) failed (test host console kept in {}):\n- {}\n\n{}",
        checks.failed.len(),
        run.console_log.display(),
        checks.failed.join("\n- "),
        run.console
    );
}
