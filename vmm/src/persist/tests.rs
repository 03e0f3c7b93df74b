//! The saved state as a whole: it round-trips, and a state that contradicts
//! itself or does not fit the host is refused before anything is built.

use super::*;
use crate::config::{DriveConfig, MachineConfig, NetworkInterfaceConfig};
use brique_devices::virtio::state::{InterruptState, SavedQueue};

fn limits() -> HostLimits {
    HostLimits::of_this_host()
}

/// A plausible whole state (two vCPUs, a drive and an interface).
pub(crate) fn sample_state() -> MicrovmState {
    sample()
}

fn sample() -> MicrovmState {
    let (vm, vcpu, legacy) = arch::sample_states();
    let config = VmConfig {
        machine_config: MachineConfig {
            vcpu_count: 2,
            mem_size_mib: 64,
            ..Default::default()
        },
        drives: vec![serde_json::from_str::<DriveConfig>(
            r#"{"drive_id": "root", "path_on_host": "/images/root.ext4", "is_root_device": true}"#,
        )
        .unwrap()],
        network_interfaces: vec![serde_json::from_str::<NetworkInterfaceConfig>(
            r#"{"iface_id": "eth0", "host_dev_name": "tap0"}"#,
        )
        .unwrap()],
        ..Default::default()
    };
    let queue = SavedQueue {
        max_size: 256,
        size: 256,
        ready: true,
        desc_table: 0x1000,
        avail_ring: 0x2000,
        used_ring: 0x3000,
        next_avail: 7,
        next_used: 7,
        event_idx: true,
    };
    let transport = |device_type, queues| MmioTransportState {
        device_type,
        status: 15,
        activated: true,
        queue_select: 0,
        device_features_select: 1,
        driver_features_select: 1,
        driver_features: 1 << 32,
        config_generation: 0,
        interrupt: InterruptState {
            status: 1,
            needs_reset: false,
        },
        queues,
    };
    MicrovmState {
        arch: arch::ARCH_NAME.to_owned(),
        brique_version: "0.1.0".to_owned(),
        memory: arch::ram_ranges(64 << 20),
        vm,
        vcpus: vec![vcpu.clone(), vcpu],
        devices: DevicesState {
            serial: SerialConsoleState {
                baud_divisor: [12, 0],
                interrupt_enable: 1,
                interrupt_identification: 1,
                line_control: 3,
                line_status: 0x60,
                modem_control: 8,
                modem_status: 0xb0,
                scratch: 0,
                receive_fifo: b"ls\n".to_vec(),
            },
            legacy,
            virtio: vec![
                VirtioDeviceState {
                    id: "root".to_owned(),
                    mmio_base: 0xc000_0000,
                    irq: 5,
                    transport: transport(2, vec![queue]),
                    device: VirtioKindState::Block(BlockState {
                        capacity_sectors: 2048,
                        config_generation: 0,
                        rate_limiter: Default::default(),
                    }),
                },
                VirtioDeviceState {
                    id: "eth0".to_owned(),
                    mmio_base: 0xc000_1000,
                    irq: 6,
                    transport: transport(1, vec![queue, queue]),
                    device: VirtioKindState::Net(NetState {
                        rx_held_frame: vec![0; 60],
                        ..Default::default()
                    }),
                },
            ],
        },
        config,
    }
}

#[test]
fn a_whole_state_round_trips_through_the_state_file() {
    let state = sample();
    let bytes = state.to_file_bytes().unwrap();
    let back = MicrovmState::from_file_bytes(&bytes).unwrap();
    assert_eq!(
        serde_json::to_value(&back).unwrap(),
        serde_json::to_value(&state).unwrap()
    );
    back.check(&limits()).unwrap();
    assert_eq!(back.memory_bytes(), 64 << 20);
    let description = back.describe();
    assert_eq!(description.format_version, file::FORMAT_VERSION);
    assert_eq!((description.vcpu_count, description.mem_size_mib), (2, 64));
    assert_eq!(description.drives, vec!["root (/images/root.ext4)"]);
    assert_eq!(description.network_interfaces, vec!["eth0 (tap0)"]);
}

#[test]
fn a_state_that_contradicts_itself_is_refused() {
    let mut foreign = sample();
    foreign.arch = "riscv64".to_owned();
    assert!(matches!(
        foreign.check(&limits()),
        Err(SnapshotError::Architecture { .. })
    ));

    let mut missing_vcpu = sample();
    missing_vcpu.vcpus.pop();
    let err = missing_vcpu.check(&limits()).unwrap_err();
    assert!(
        err.to_string().contains("1 vCPU states for 2 vCPUs"),
        "{err}"
    );

    let mut wrong_memory = sample();
    wrong_memory.memory = arch::ram_ranges(32 << 20);
    assert!(matches!(
        wrong_memory.check(&limits()),
        Err(SnapshotError::Unfit(_))
    ));

    let mut extra_device = sample();
    let device = extra_device.devices.virtio[0].clone();
    extra_device.devices.virtio.push(device);
    assert!(matches!(
        extra_device.check(&limits()),
        Err(SnapshotError::Unfit(_))
    ));

    let mut too_big = sample();
    too_big.config.machine_config.mem_size_mib = usize::MAX >> 21;
    too_big.memory = arch::ram_ranges((too_big.config.machine_config.mem_size_mib as u64) << 20);
    assert!(matches!(
        too_big.check(&limits()),
        Err(SnapshotError::Config(_))
    ));
}

#[test]
fn a_state_with_unknown_fields_or_bad_json_is_malformed() {
    let mut value = serde_json::to_value(sample()).unwrap();
    value["surprise"] = serde_json::json!(1);
    let bytes = file::encode(&serde_json::to_vec(&value).unwrap());
    assert!(matches!(
        MicrovmState::from_file_bytes(&bytes),
        Err(SnapshotError::Malformed(_))
    ));
    let bytes = file::encode(b"{\"arch\": ");
    assert!(matches!(
        MicrovmState::from_file_bytes(&bytes),
        Err(SnapshotError::Malformed(_))
    ));
}

fn load(body: serde_json::Value) -> SnapshotLoadParams {
    serde_json::from_value(body).unwrap()
}

#[test]
fn a_load_names_exactly_one_file_memory_backend() {
    let path = |params: &SnapshotLoadParams| params.memory_file().map(|p| p.to_owned());
    let new_form = load(serde_json::json!({
        "snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"}
    }));
    assert_eq!(path(&new_form).unwrap(), std::path::Path::new("/m"));
    let old_form = load(serde_json::json!({"snapshot_path": "/s", "mem_file_path": "/old"}));
    assert_eq!(path(&old_form).unwrap(), std::path::Path::new("/old"));
    let both = load(serde_json::json!({
        "snapshot_path": "/s", "mem_file_path": "/old",
        "mem_backend": {"backend_type": "File", "backend_path": "/m"}
    }));
    assert!(path(&both).unwrap_err().contains("not both"));
    let neither = load(serde_json::json!({"snapshot_path": "/s"}));
    assert!(path(&neither).is_err());
    let uffd = load(serde_json::json!({
        "snapshot_path": "/s", "mem_backend": {"backend_type": "Uffd", "backend_path": "/u"}
    }));
    assert!(path(&uffd).unwrap_err().contains("Uffd"));
    assert!(serde_json::from_value::<SnapshotLoadParams>(
        serde_json::json!({"snapshot_path": "/s", "mem_file_path": "/m", "typo": 1})
    )
    .is_err());
    let deprecated = load(serde_json::json!({
        "snapshot_path": "/s", "mem_file_path": "/m", "enable_diff_snapshots": true
    }));
    assert!(deprecated.tracks_dirty_pages());
    assert!(!old_form.tracks_dirty_pages());
}

#[test]
fn network_overrides_retarget_interfaces_the_snapshot_has() {
    let mut config = sample().config;
    let params = load(serde_json::json!({
        "snapshot_path": "/s", "mem_file_path": "/m",
        "network_overrides": [{"iface_id": "eth0", "host_dev_name": "clone1"}]
    }));
    params.apply_network_overrides(&mut config).unwrap();
    assert_eq!(config.network_interfaces[0].host_dev_name, "clone1");
    let unknown = load(serde_json::json!({
        "snapshot_path": "/s", "mem_file_path": "/m",
        "network_overrides": [{"iface_id": "eth7", "host_dev_name": "x"}]
    }));
    assert!(unknown.apply_network_overrides(&mut config).is_err());
    let bad_name = load(serde_json::json!({
        "snapshot_path": "/s", "mem_file_path": "/m",
        "network_overrides": [{"iface_id": "eth0", "host_dev_name": "a/b"}]
    }));
    let before = config.clone();
    let mut attempt = config.clone();
    assert!(bad_name.apply_network_overrides(&mut attempt).is_err());
    assert_eq!(config, before);
}

#[test]
fn create_params_default_to_full_and_accept_the_deprecated_version() {
    let params: SnapshotCreateParams = serde_json::from_value(serde_json::json!({
        "snapshot_path": "/s", "mem_file_path": "/m", "version": "1.0.0"
    }))
    .unwrap();
    assert_eq!(params.snapshot_type, SnapshotType::Full);
    let diff: SnapshotCreateParams = serde_json::from_value(serde_json::json!({
        "snapshot_type": "Diff", "snapshot_path": "/s", "mem_file_path": "/m"
    }))
    .unwrap();
    assert_eq!(diff.snapshot_type, SnapshotType::Diff);
    assert!(serde_json::from_value::<SnapshotCreateParams>(
        serde_json::json!({"snapshot_type": "Partial", "snapshot_path": "/s", "mem_file_path": "/m"})
    )
    .is_err());
}
