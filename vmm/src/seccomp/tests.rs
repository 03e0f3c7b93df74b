use super::*;

fn json_file(text: &str) -> tempfile_like::TempJson {
    tempfile_like::TempJson::new(text)
}

/// A temporary file for filter JSON, removed on drop.
mod tempfile_like {
    use std::io::Write;
    use std::path::PathBuf;

    pub struct TempJson(pub PathBuf);

    impl TempJson {
        pub fn new(text: &str) -> TempJson {
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!(
                "brique-seccomp-test-{}-{n}.json",
                std::process::id()
            ));
            let mut file = std::fs::File::create(&path).unwrap();
            file.write_all(text.as_bytes()).unwrap();
            TempJson(path)
        }
    }

    impl Drop for TempJson {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// A filter that allows only `allowing` and traps anything else.
fn one_filter(allowing: &str) -> String {
    format!(
        r#"{{"mismatch_action": "trap", "match_action": "allow",
            "filter": [{{"syscall": "{allowing}"}}]}}"#
    )
}

#[test]
fn every_thread_kind_has_a_builtin_filter() {
    let filters = Filters::builtin().unwrap();
    for kind in FilterKind::ALL {
        let programs = &filters.programs[&kind];
        assert!(!programs.is_empty(), "{kind:?}");
        assert!(
            programs.iter().all(|program| !program.is_empty()),
            "{kind:?}"
        );
    }
    // The VMM thread also gets the filter that answers clone3 with ENOSYS.
    assert_eq!(filters.programs[&FilterKind::Vmm].len(), 2);
}

#[test]
fn the_vcpu_filter_lets_fewer_ioctls_through_than_the_vmm_one() {
    let vcpu = ioctls::vcpu();
    let vmm = ioctls::vmm();
    assert!(vcpu.len() < vmm.len());
    // KVM_CREATE_VM is the VMM thread's alone.
    let create_vm = ioctls::KVM_CREATE_VM();
    assert!(vmm.contains(&create_vm));
    assert!(!vcpu.contains(&create_vm));
    assert!(!ioctls::api().contains(&create_vm));
}

#[test]
fn a_filter_file_with_every_kind_is_taken() {
    let text = format!(
        r#"{{"vmm": {f}, "api": {f}, "vcpu": {f}, "devices": {f}, "signals": {f}}}"#,
        f = one_filter("read")
    );
    let file = json_file(&text);
    let filters = Filters::from_json_file(&file.0).unwrap();
    assert_eq!(filters.programs.len(), FilterKind::ALL.len());
}

#[test]
fn a_firecracker_filter_file_gives_the_helper_threads_the_vmm_filter() {
    let text = format!(
        r#"{{"vmm": {}, "api": {}, "vcpu": {}}}"#,
        one_filter("read"),
        one_filter("write"),
        one_filter("ioctl")
    );
    let file = json_file(&text);
    let filters = Filters::from_json_file(&file.0).unwrap();
    let vmm = &filters.programs[&FilterKind::Vmm];
    assert_eq!(&filters.programs[&FilterKind::Devices], vmm);
    assert_eq!(&filters.programs[&FilterKind::Signals], vmm);
    assert_ne!(&filters.programs[&FilterKind::Api], vmm);
}

#[test]
fn a_filter_file_missing_a_kind_or_naming_an_unknown_one_is_refused() {
    let missing = json_file(&format!(
        r#"{{"vmm": {f}, "api": {f}}}"#,
        f = one_filter("read")
    ));
    let err = Filters::from_json_file(&missing.0).unwrap_err();
    assert!(
        matches!(err, SeccompError::MissingKind { kind: "vcpu", .. }),
        "{err}"
    );

    let unknown = json_file(&format!(
        r#"{{"vmm": {f}, "api": {f}, "vcpu": {f}, "balloon": {f}}}"#,
        f = one_filter("read")
    ));
    let err = Filters::from_json_file(&unknown.0).unwrap_err();
    assert!(err.to_string().contains("balloon"), "{err}");
}

#[test]
fn a_filter_file_that_is_not_seccompiler_json_is_refused_with_its_path() {
    let file = json_file(r#"{"vmm": {"filter": "nonsense"}}"#);
    let err = Filters::from_json_file(&file.0).unwrap_err();
    assert!(matches!(err, SeccompError::ParseFile { .. }), "{err}");
    assert!(err.to_string().contains(&file.0.display().to_string()));

    let err = Filters::from_json_file(Path::new("/nonexistent/filter.json")).unwrap_err();
    assert!(matches!(err, SeccompError::ReadFile { .. }), "{err}");
}

#[test]
fn a_violation_message_names_the_thread_and_the_system_call() {
    violation::install_names_for_tests();
    let mut line = String::new();
    violation::message("brique-vcpu0", "vcpu", libc::SYS_socket, &mut line);
    assert_eq!(
        line,
        format!(
            "brique: seccomp: thread brique-vcpu0 (vcpu filter) made system call socket ({}), which its filter does not allow; exiting with status 148",
            libc::SYS_socket
        )
    );
    let mut unnamed = String::new();
    violation::message("brique-api", "api", 100_000, &mut unnamed);
    assert!(unnamed.contains("made system call 100000,"), "{unnamed}");
}

#[test]
fn every_allowed_system_call_has_a_name_for_messages() {
    let names = rules::known_syscalls();
    for kind in FilterKind::ALL {
        for nr in rules::allowed(kind).unwrap().keys() {
            assert!(
                names.iter().any(|syscall| syscall.nr == *nr),
                "{kind:?}: system call {nr} has no name"
            );
        }
    }
}
