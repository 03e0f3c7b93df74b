//! End-to-end tests: real Linux guests booted by brique inside the
//! nested-KVM test host (resources/testhost.sh). They need the artifacts of
//! resources/build-artifacts.sh and target/release/brique, which the README
//! test command (resources/run-tests.sh) builds first.

use brique_tests::{on_test_hosts, run_in_test_host_on, HostArch};

fn boots_to_init_with_one_and_two_vcpus_and_reboot_ends_brique_cleanly(arch: HostArch) {
    let run = run_in_test_host_on(
        arch,
        r#"
        boot_case one_vcpu 1 128 "$GUEST_KERNEL" "$DEFAULT_ARGS"
        boot_case two_vcpus 2 128 "$GUEST_KERNEL" "$DEFAULT_ARGS"
        "#,
        &[],
    );
    let one = run.case("one_vcpu");
    assert!(one.console_has("BRIQUE_GUEST_INIT_OK cpus=1 "), "{one:#?}");
    assert!(one.console_line("BRIQUE_GUEST_REBOOTING"), "{one:#?}");
    assert_eq!(one.exit, 0, "guest reboot ends brique with 0: {one:#?}");

    let two = run.case("two_vcpus");
    assert!(two.console_has("BRIQUE_GUEST_INIT_OK cpus=2 "), "{two:#?}");
    assert_eq!(two.exit, 0, "{two:#?}");
}

fn bzimage_boots_and_memory_size_is_what_was_asked(arch: HostArch) {
    let run = run_in_test_host_on(
        arch,
        r#"boot_case bzimage 1 256 "$GUEST_BZIMAGE" "$DEFAULT_ARGS""#,
        &[],
    );
    let case = run.case("bzimage");
    assert_eq!(case.exit, 0, "{case:#?}");
    let line = case
        .console
        .iter()
        .find(|l| l.contains("BRIQUE_GUEST_INIT_OK"))
        .unwrap_or_else(|| panic!("no init marker: {case:#?}"));
    let mem_kib: u64 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("mem_kib="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no mem_kib in {line}"));
    // MemTotal is RAM minus what the kernel keeps: close to, below 256 MiB.
    assert!((200 * 1024..256 * 1024).contains(&mem_kib), "{line}");
}

fn guest_kernel_panic_ends_brique_with_an_error_and_a_message(arch: HostArch) {
    let run = run_in_test_host_on(
        arch,
        r#"boot_case panic 1 128 "$GUEST_KERNEL" "$DEFAULT_ARGS brique_action=panic""#,
        &[],
    );
    let case = run.case("panic");
    assert!(case.console_line("BRIQUE_GUEST_PANICKING"), "{case:#?}");
    assert_eq!(case.exit, 1, "{case:#?}");
    assert!(
        case.stderr
            .iter()
            .any(|l| l.contains("guest kernel panic: Kernel panic - not syncing")),
        "{case:#?}"
    );
}

fn stdin_reaches_the_guest_console(arch: HostArch) {
    // The guest runs a shell on its console; brique's stdin is a pipe.
    let run = run_in_test_host_on(
        arch,
        r#"
        printf 'echo STDIN_SUM_$((40+2))\nreboot -f\n' > /tmp/typed
        BRIQUE_STDIN=/tmp/typed boot_case stdin 1 128 "$GUEST_KERNEL" "$DEFAULT_ARGS brique_action=shell"
        "#,
        &[],
    );
    let case = run.case("stdin");
    assert!(case.console_line("STDIN_SUM_42"), "{case:#?}");
    assert_eq!(case.exit, 0, "{case:#?}");
}

// Each case on each test host it applies to (the same script on both).
on_test_hosts!(boots_to_init_with_one_and_two_vcpus_and_reboot_ends_brique_cleanly on X86_64, Aarch64);
on_test_hosts!(guest_kernel_panic_ends_brique_with_an_error_and_a_message on X86_64, Aarch64);
on_test_hosts!(stdin_reaches_the_guest_console on X86_64, Aarch64);
on_test_hosts!(bzimage_boots_and_memory_size_is_what_was_asked on X86_64);
