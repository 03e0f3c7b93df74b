//! The virtio-mmio transport driven the way a Linux driver drives it.

use super::block::{Block, CacheMode, Disk};
use super::mmio::*;
use super::*;
use crate::bus::BusDevice;
use std::sync::Mutex;
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EFD_NONBLOCK;

struct Fixture {
    transport: MmioTransport,
    irq: EventFd,
    path: std::path::PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn fixture(name: &str) -> Fixture {
    let path = std::env::temp_dir().join(format!("brique-mmio-{name}-{}", std::process::id()));
    std::fs::write(&path, vec![0u8; 8192]).unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let block = Block::new(Disk::new(file, false, CacheMode::Writeback, "d").unwrap()).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let interrupt = Interrupt::new(crate::EventFdTrigger::new(irq.try_clone().unwrap()));
    let transport = MmioTransport::new(Arc::new(Mutex::new(block)), mem, interrupt).unwrap();
    Fixture {
        transport,
        irq,
        path,
    }
}

fn read(t: &mut MmioTransport, offset: u32) -> u32 {
    let mut data = [0u8; 4];
    t.read(u64::from(offset), &mut data);
    u32::from_le_bytes(data)
}

fn write(t: &mut MmioTransport, offset: u32, value: u32) {
    t.write(u64::from(offset), &value.to_le_bytes());
}

fn negotiate(t: &mut MmioTransport) {
    write(t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    write(
        t,
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    );
    for select in 0..2 {
        write(t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, select);
        let offered = read(t, VIRTIO_MMIO_DEVICE_FEATURES);
        write(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, select);
        write(t, VIRTIO_MMIO_DRIVER_FEATURES, offered);
    }
    write(
        t,
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
    );
}

const FEATURES_OK_STATUS: u32 =
    VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;

fn setup_queue(t: &mut MmioTransport) {
    write(t, VIRTIO_MMIO_QUEUE_SEL, 0);
    write(t, VIRTIO_MMIO_QUEUE_NUM, 16);
    write(t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1000);
    write(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x2000);
    write(t, VIRTIO_MMIO_QUEUE_USED_LOW, 0x3000);
    write(t, VIRTIO_MMIO_QUEUE_READY, 1);
}

#[test]
fn identifies_as_a_modern_block_device() {
    let mut f = fixture("id");
    let t = &mut f.transport;
    assert_eq!(read(t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(read(t, VIRTIO_MMIO_VERSION), 2);
    assert_eq!(read(t, VIRTIO_MMIO_DEVICE_ID), 2);
    write(t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    assert_eq!(read(t, VIRTIO_MMIO_DEVICE_FEATURES) & 1, 1, "VERSION_1");
    assert_eq!(read(t, VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
    let mut capacity = [0u8; 8];
    t.read(0x100, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), 16);
}

#[test]
fn features_ok_requires_version_1_and_a_subset() {
    let mut f = fixture("features");
    let t = &mut f.transport;
    write(t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    write(
        t,
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    );
    // Legacy driver: no VERSION_1.
    write(t, VIRTIO_MMIO_STATUS, FEATURES_OK_STATUS);
    assert_eq!(read(t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    // A feature the device never offered.
    write(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    write(t, VIRTIO_MMIO_DRIVER_FEATURES, 1 | (1 << 20));
    write(t, VIRTIO_MMIO_STATUS, FEATURES_OK_STATUS);
    assert_eq!(read(t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    write(t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
    write(t, VIRTIO_MMIO_STATUS, FEATURES_OK_STATUS);
    assert_eq!(read(t, VIRTIO_MMIO_STATUS), FEATURES_OK_STATUS);
}

#[test]
fn status_steps_cannot_be_skipped() {
    let mut f = fixture("status");
    let t = &mut f.transport;
    write(t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER_OK);
    assert_eq!(read(t, VIRTIO_MMIO_STATUS), 0);
    write(t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    write(
        t,
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_FEATURES_OK,
    );
    assert_eq!(read(t, VIRTIO_MMIO_STATUS), VIRTIO_CONFIG_S_ACKNOWLEDGE);
    // Queue registers are locked before FEATURES_OK.
    write(t, VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(read(t, VIRTIO_MMIO_QUEUE_READY), 0);
}

#[test]
fn driver_ok_activates_and_notifications_reach_the_queue_eventfd() {
    let mut f = fixture("activate");
    negotiate(&mut f.transport);
    setup_queue(&mut f.transport);
    assert_eq!(read(&mut f.transport, VIRTIO_MMIO_QUEUE_READY), 1);
    write(
        &mut f.transport,
        VIRTIO_MMIO_STATUS,
        FEATURES_OK_STATUS | VIRTIO_CONFIG_S_DRIVER_OK,
    );
    assert_eq!(
        read(&mut f.transport, VIRTIO_MMIO_STATUS),
        FEATURES_OK_STATUS | VIRTIO_CONFIG_S_DRIVER_OK
    );
    write(&mut f.transport, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert_eq!(f.transport.queue_evts()[0].read().unwrap(), 1);
    // A notification for a queue that does not exist goes nowhere.
    write(&mut f.transport, VIRTIO_MMIO_QUEUE_NOTIFY, 7);
    // Queue registers are locked after DRIVER_OK.
    write(&mut f.transport, VIRTIO_MMIO_QUEUE_NUM, 2);
    assert!(f.irq.read().is_err(), "no interrupt yet");
}

#[test]
fn activation_with_a_bad_queue_needs_reset_and_reset_clears_everything() {
    let mut f = fixture("reset");
    negotiate(&mut f.transport);
    // Queue never made ready.
    write(
        &mut f.transport,
        VIRTIO_MMIO_STATUS,
        FEATURES_OK_STATUS | VIRTIO_CONFIG_S_DRIVER_OK,
    );
    let status = read(&mut f.transport, VIRTIO_MMIO_STATUS);
    assert_ne!(status & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    assert_eq!(f.irq.read().unwrap(), 1);
    assert_eq!(
        read(&mut f.transport, VIRTIO_MMIO_INTERRUPT_STATUS),
        INT_CONFIG
    );
    write(&mut f.transport, VIRTIO_MMIO_INTERRUPT_ACK, INT_CONFIG);
    assert_eq!(read(&mut f.transport, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    // Linux adds FAILED to the status it read back, NEEDS_RESET included.
    write(
        &mut f.transport,
        VIRTIO_MMIO_STATUS,
        status | VIRTIO_CONFIG_S_FAILED,
    );
    assert_eq!(
        read(&mut f.transport, VIRTIO_MMIO_STATUS),
        status | VIRTIO_CONFIG_S_FAILED
    );
    assert!(f.irq.read().is_err(), "NEEDS_RESET is announced once");

    write(&mut f.transport, VIRTIO_MMIO_STATUS, 0);
    assert_eq!(read(&mut f.transport, VIRTIO_MMIO_STATUS), 0);
    drive_to_driver_ok(&mut f.transport);
    assert_eq!(
        read(&mut f.transport, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
        0
    );
}

#[test]
fn odd_sized_and_unaligned_register_accesses_are_harmless() {
    let mut f = fixture("odd");
    let mut byte = [0xffu8; 1];
    f.transport
        .read(u64::from(VIRTIO_MMIO_MAGIC_VALUE), &mut byte);
    assert_eq!(byte, [0]);
    f.transport.write(u64::from(VIRTIO_MMIO_STATUS), &[1]);
    f.transport.write(2, &1u32.to_le_bytes());
    assert_eq!(read(&mut f.transport, VIRTIO_MMIO_STATUS), 0);
}

#[test]
fn random_register_traffic_never_panics() {
    let mut f = fixture("random");
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..200_000u32 {
        if round % 1000 == 0 {
            // Now and then, a full bring-up, so random traffic also hits an
            // activated device and the queue registers.
            write(&mut f.transport, VIRTIO_MMIO_STATUS, 0);
            negotiate(&mut f.transport);
            if round % 2000 == 0 {
                setup_queue(&mut f.transport);
                write(
                    &mut f.transport,
                    VIRTIO_MMIO_STATUS,
                    FEATURES_OK_STATUS | VIRTIO_CONFIG_S_DRIVER_OK,
                );
            }
        }
        let offset = next() % 0x140;
        let len = [1usize, 2, 4, 8][(next() % 4) as usize];
        if next() % 2 == 0 {
            let mut data = vec![0u8; len];
            f.transport.read(offset, &mut data);
        } else {
            let value = next().to_le_bytes();
            f.transport.write(offset, &value[..len]);
        }
    }
    // Whatever happened, a reset brings the device back to a clean start.
    write(&mut f.transport, VIRTIO_MMIO_STATUS, 0);
    assert_eq!(read(&mut f.transport, VIRTIO_MMIO_STATUS), 0);
    negotiate(&mut f.transport);
    assert_eq!(
        read(&mut f.transport, VIRTIO_MMIO_STATUS),
        FEATURES_OK_STATUS
    );
}

/// Drives `t` as Linux does up to DRIVER_OK: features, one queue, go.
fn drive_to_driver_ok(t: &mut MmioTransport) {
    negotiate(t);
    setup_queue(t);
    write(
        t,
        VIRTIO_MMIO_STATUS,
        FEATURES_OK_STATUS | VIRTIO_CONFIG_S_DRIVER_OK,
    );
}

/// A transport whose block device the driver activated.
fn activated(name: &str) -> Fixture {
    let mut f = fixture(name);
    drive_to_driver_ok(&mut f.transport);
    f
}

/// A fresh transport over a new block device, restored from `state`.
fn restored(
    f: &Fixture,
    state: &MmioTransportState,
) -> (
    Result<MmioTransport, crate::state::StateError>,
    Arc<Mutex<Block>>,
) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&f.path)
        .unwrap();
    let block = Arc::new(Mutex::new(
        Block::new(Disk::new(file, false, CacheMode::Writeback, "d").unwrap()).unwrap(),
    ));
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let interrupt = Interrupt::new(crate::EventFdTrigger::new(irq));
    (
        MmioTransport::restore(block.clone(), mem, interrupt, state),
        block,
    )
}

#[test]
fn an_active_devices_queues_live_in_the_device_and_come_back_with_it() {
    let mut f = activated("save-active");
    let saved = f.transport.save();
    assert!(saved.activated);
    assert_eq!(saved.queues.len(), 1);
    assert_eq!(
        (saved.queues[0].size, saved.queues[0].desc_table),
        (16, 0x1000)
    );
    assert!(saved.queues[0].event_idx, "the driver accepted EVENT_IDX");
    // The transport gave its queue away: QueueReady reads 0 from it now.
    write(&mut f.transport, VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(read(&mut f.transport, VIRTIO_MMIO_QUEUE_READY), 0);

    let (transport, block) = restored(&f, &saved);
    let transport = transport.expect("restores");
    assert!(
        lock(&block).active_queues().is_some(),
        "the restored device is active"
    );
    assert_eq!(
        transport.save(),
        saved,
        "save, restore, save gives the same"
    );
}

fn lock(block: &Arc<Mutex<Block>>) -> std::sync::MutexGuard<'_, Block> {
    block.lock().unwrap()
}

#[test]
fn a_device_not_yet_activated_keeps_the_drivers_setup() {
    let mut f = fixture("save-setup");
    negotiate(&mut f.transport);
    setup_queue(&mut f.transport);
    let saved = f.transport.save();
    assert!(!saved.activated);
    assert!(saved.queues[0].ready);
    let (transport, block) = restored(&f, &saved);
    let mut transport = transport.unwrap();
    assert!(lock(&block).active_queues().is_none());
    assert_eq!(read(&mut transport, VIRTIO_MMIO_STATUS), FEATURES_OK_STATUS);
    // The driver finishes where it left off.
    write(
        &mut transport,
        VIRTIO_MMIO_STATUS,
        FEATURES_OK_STATUS | VIRTIO_CONFIG_S_DRIVER_OK,
    );
    assert!(lock(&block).active_queues().is_some());
}

#[test]
fn a_saved_transport_that_does_not_fit_is_refused_and_the_device_untouched() {
    let f = activated("save-refused");
    let good = f.transport.save();
    let mut cases: Vec<(&str, MmioTransportState)> = Vec::new();
    let mut wrong_type = good.clone();
    wrong_type.device_type = 1;
    cases.push(("device type", wrong_type));
    let mut extra_queue = good.clone();
    extra_queue.queues.push(extra_queue.queues[0]);
    cases.push(("saved queues", extra_queue));
    let mut never_offered = good.clone();
    never_offered.driver_features |= 1 << 63;
    cases.push(("never offered", never_offered));
    let mut outside = good.clone();
    outside.queues[0].used_ring = 0xffff_f000;
    cases.push(("outside guest memory", outside));
    let mut bad_size = good.clone();
    bad_size.queues[0].size = 17;
    cases.push(("queue", bad_size));
    let mut bigger = good.clone();
    bigger.queues[0].max_size = 1024;
    cases.push(("entries", bigger));
    let mut not_ok = good.clone();
    not_ok.status = FEATURES_OK_STATUS;
    cases.push(("DRIVER_OK", not_ok));
    let mut bad_interrupt = good.clone();
    bad_interrupt.interrupt.status = 0x80;
    cases.push(("status 0x80", bad_interrupt));
    for (needle, state) in cases {
        let (result, block) = restored(&f, &state);
        let err = result.expect_err(needle);
        assert!(err.to_string().contains(needle), "{needle}: {err}");
        assert!(lock(&block).active_queues().is_none(), "{needle}");
    }
}
