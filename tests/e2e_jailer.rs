//! brique-jailer end to end in the x86_64 test host, whose cgroup v2 has the
//! memory controller: a jailed brique (uid/gid 123, new mount and PID
//! namespaces, cgroup memory.max) boots a Linux guest through the API socket
//! inside its jail, every thread under seccomp; a second jail whose memory
//! limit is below what the guest needs is stopped by the kernel's OOM
//! killer, which is the limit in force. Needs the static binaries
//! `resources/build-static.sh` builds (the test command runs it first);
//! without them the test says SKIPPED loudly.

use brique_tests::{on_test_hosts, run_in_test_host_on, static_binary, HostArch};

fn jailed_brique_boots_a_guest_within_its_cgroup_limit(arch: HostArch) {
    let (Some(brique), Some(jailer)) = (static_binary("brique"), static_binary("brique-jailer"))
    else {
        return;
    };
    let brique = std::fs::read(brique).expect("read the static brique");
    let jailer = std::fs::read(jailer).expect("read the static brique-jailer");
    let script = r#"
        mkdir -p /sys/fs/cgroup
        grep -q ' /sys/fs/cgroup cgroup2 ' /proc/mounts || mount -t cgroup2 none /sys/fs/cgroup
        # pivot_root cannot leave the initramfs the test host runs from: the
        # jailer runs from a tmpfs root, as on a host with a real root.
        host=/jailhost
        mkdir -p $host && mount -t tmpfs tmpfs $host
        mkdir -p $host/proc $host/sys $host/dev $host/tmp $host/bin $host/srv
        for dir in proc sys dev; do mount -o rbind /$dir $host/$dir; done
        cp brique brique-jailer $host/bin/ && chmod +x $host/bin/brique $host/bin/brique-jailer
        # jail NAME MEMORY_MAX: a jailed brique, its guest held up at init.
        jail() {
            chroot $host /bin/brique-jailer --id "$1" --exec-file /bin/brique --uid 123 --gid 123 \
                --chroot-base-dir /srv/jailer --new-pid-ns --cgroup "memory.max=$2" \
                --resource-limit no-file=256 \
                -- --api-sock /api.sock < /dev/null > "/tmp/$1.console" 2> "/tmp/$1.err"
            echo "JAILER_$1=$?"
            root=$host/srv/jailer/brique/$1/root
            cp "$GUEST_KERNEL" "$root/vmlinux"; cp "$GUEST_INITRAMFS" "$root/initramfs"
            pid=$(cat "$root/brique.pid" 2>/dev/null || echo 999999)
            n=0; while [ ! -S "$root/api.sock" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
            api() {
                out=$(curl -s -S -w ' HTTP=%{http_code}' --unix-socket "$root/api.sock" -X "$2" \
                    -H 'Content-Type: application/json' ${4:+--data "$4"} "http://localhost$3")
                echo "API $1 $2 $3 $out"
            }
            api "$1" PUT /machine-config '{"vcpu_count": 2, "mem_size_mib": 128}'
            api "$1" PUT /boot-source "{\"kernel_image_path\": \"/vmlinux\", \"initrd_path\": \"/initramfs\", \"boot_args\": \"$DEFAULT_ARGS brique_action=hold\"}"
            api "$1" PUT /actions '{"action_type": "InstanceStart"}'
        }
        jail roomy 512M
        wait_for_line /tmp/roomy.console BRIQUE_GUEST_INIT_OK "$pid" 300
        for task in /proc/$pid/task/*; do
            echo "TASK $(cat $task/comm) $(grep -E '^(Uid|Gid|Seccomp):' $task/status | tr -s '\t' ' ' | tr '\n' ' ')"
        done
        for ns in mnt pid; do
            [ "$(readlink /proc/$pid/ns/$ns)" != "$(readlink /proc/self/ns/$ns)" ] && echo "NS_NEW $ns"
        done
        echo "NSPID $(grep NSpid /proc/$pid/status | tr -s '\t' ' ')"
        echo "CGROUP $(cat /proc/$pid/cgroup)"
        echo "MEMORY_MAX $(cat /sys/fs/cgroup/brique/roomy/memory.max)"
        echo "NOFILE $(grep 'Max open files' /proc/$pid/limits | tr -s ' ')"
        echo "FDS $(for fd in /proc/$pid/fd/*; do readlink $fd; done | sort | uniq -c | tr -s ' ' | tr '\n' ';')"
        api roomy GET /
        kill -9 "$pid"
        jail tight 16M
        n=0; while kill -0 "$pid" 2>/dev/null && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done
        kill -0 "$pid" 2>/dev/null && echo TIGHT_STILL_RUNS
        echo "TIGHT_EVENTS $(tr '\n' ' ' < /sys/fs/cgroup/brique/tight/memory.events)"
        grep -q BRIQUE_GUEST_INIT_OK /tmp/tight.console && echo TIGHT_GUEST_BOOTED
        # An unknown cgroup file: one line, exit 1, no jail and no cgroup left.
        chroot $host /bin/brique-jailer --id bad-cg --exec-file /bin/brique --uid 123 --gid 123 \
            --chroot-base-dir /srv/jailer --cgroup memory.nonsense=1 2> /tmp/bad-cg.err
        echo "BADCG_EXIT=$? LINES=$(wc -l < /tmp/bad-cg.err) $(cat /tmp/bad-cg.err)"
        [ -e $host/srv/jailer/brique/bad-cg ] && echo BADCG_JAIL_LEFT
        [ -e /sys/fs/cgroup/brique/bad-cg ] && echo BADCG_CGROUP_LEFT
        sed 's/^/[stderr roomy] /' /tmp/roomy.err | tail -5
        sed 's/^/[stderr tight] /' /tmp/tight.err | tail -5
        "#;
    let run = run_in_test_host_on(
        arch,
        script,
        &[("brique", &brique), ("brique-jailer", &jailer)],
    );
    let console = &run.console;
    assert!(console.contains("JAILER_roomy=0"), "{console}");
    for request in [
        "API roomy PUT /machine-config  HTTP=204",
        "API roomy PUT /boot-source  HTTP=204",
        "API roomy PUT /actions  HTTP=204",
    ] {
        assert!(console.contains(request), "{request}:\n{console}");
    }
    assert!(console.contains(r#""id":"roomy""#), "{console}");
    let tasks: Vec<&str> = console.lines().filter(|l| l.starts_with("TASK ")).collect();
    assert!(tasks.len() >= 5, "threads: {tasks:?}\n{console}");
    for task in &tasks {
        assert!(task.contains("Uid: 123 123 123 123"), "{task}");
        assert!(task.contains("Gid: 123 123 123 123"), "{task}");
        assert!(task.contains("Seccomp: 2"), "{task}");
    }
    assert!(
        tasks.iter().any(|t| t.starts_with("TASK brique-vcpu1")),
        "{tasks:?}"
    );
    assert!(
        console.contains("NS_NEW mnt") && console.contains("NS_NEW pid"),
        "{console}"
    );
    assert!(console.contains("CGROUP 0::/brique/roomy"), "{console}");
    assert!(console.contains("MEMORY_MAX 536870912"), "{console}");
    assert!(
        console.contains("NOFILE Max open files 256 256 files"),
        "{console}"
    );
    let fds = console
        .lines()
        .find(|l| l.starts_with("FDS "))
        .unwrap_or_else(|| panic!("{console}"));
    // Only what brique opened: stdio, KVM, eventfds, epoll, its socket.
    for part in fds
        .trim_start_matches("FDS ")
        .split(';')
        .filter(|p| !p.is_empty())
    {
        let target = part.split_whitespace().nth(1).unwrap_or_default();
        assert!(
            target.starts_with("anon_inode:")
                || target.starts_with("socket:")
                || target.ends_with("/dev/kvm")
                || target.starts_with("/tmp/roomy.")
                || target == "/dev/null"
                || target.starts_with("/vmlinux")
                || target.starts_with("/initramfs"),
            "unexpected descriptor {target} in {fds}"
        );
    }
    assert!(
        console.contains("BADCG_EXIT=1 LINES=1 brique-jailer: unknown cgroup file memory.nonsense"),
        "{console}"
    );
    assert!(!console.contains("BADCG_JAIL_LEFT"), "{console}");
    assert!(!console.contains("BADCG_CGROUP_LEFT"), "{console}");
    // The tight jail's limit stops brique: the OOM killer ends it.
    assert!(!console.contains("TIGHT_STILL_RUNS"), "{console}");
    assert!(!console.contains("TIGHT_GUEST_BOOTED"), "{console}");
    let events = console
        .lines()
        .find(|l| l.starts_with("TIGHT_EVENTS "))
        .unwrap_or_else(|| panic!("{console}"));
    let oom_kills: u64 = events
        .split_whitespace()
        .skip_while(|word| *word != "oom_kill")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(oom_kills >= 1, "no OOM kill in the tight cgroup: {events}");
}

on_test_hosts!(jailed_brique_boots_a_guest_within_its_cgroup_limit on X86_64);
