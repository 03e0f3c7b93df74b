//! The ioctl requests each kind of thread makes. Request numbers are built
//! from their definitions in the kernel's uapi headers (`_IO`/`_IOW`/`_IOR`
//! with the kvm-bindings structures), so their sizes follow the target.

#![allow(non_snake_case)]

use crate::arch;
use kvm_bindings::{
    kvm_create_device, kvm_device_attr, kvm_dirty_log, kvm_enable_cap, kvm_ioeventfd, kvm_irqfd,
    kvm_mp_state, kvm_one_reg, kvm_userspace_memory_region,
};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

/// KVM's ioctl type.
pub(crate) const KVMIO: u32 = 0xAE;

ioctl_io_nr!(KVM_GET_API_VERSION, KVMIO, 0x00);
ioctl_io_nr!(KVM_CREATE_VM, KVMIO, 0x01);
ioctl_io_nr!(KVM_CHECK_EXTENSION, KVMIO, 0x03);
ioctl_io_nr!(KVM_GET_VCPU_MMAP_SIZE, KVMIO, 0x04);
ioctl_io_nr!(KVM_CREATE_VCPU, KVMIO, 0x41);
ioctl_iow_nr!(KVM_GET_DIRTY_LOG, KVMIO, 0x42, kvm_dirty_log);
ioctl_iow_nr!(
    KVM_SET_USER_MEMORY_REGION,
    KVMIO,
    0x46,
    kvm_userspace_memory_region
);
ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_irqfd);
ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_ioeventfd);
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
ioctl_iow_nr!(KVM_SET_MP_STATE, KVMIO, 0x99, kvm_mp_state);
ioctl_iow_nr!(KVM_ENABLE_CAP, KVMIO, 0xa3, kvm_enable_cap);
ioctl_iow_nr!(KVM_GET_ONE_REG, KVMIO, 0xab, kvm_one_reg);
ioctl_iow_nr!(KVM_SET_ONE_REG, KVMIO, 0xac, kvm_one_reg);
ioctl_iowr_nr!(KVM_CREATE_DEVICE, KVMIO, 0xe0, kvm_create_device);
ioctl_iow_nr!(KVM_SET_DEVICE_ATTR, KVMIO, 0xe1, kvm_device_attr);
ioctl_iow_nr!(KVM_GET_DEVICE_ATTR, KVMIO, 0xe2, kvm_device_attr);
ioctl_iow_nr!(KVM_HAS_DEVICE_ATTR, KVMIO, 0xe3, kvm_device_attr);

/// A request number libc defines (its type depends on the C library).
#[allow(clippy::unnecessary_cast)]
fn request(number: libc::Ioctl) -> u64 {
    number as u64
}

/// The tap requests (libc has them).
fn tap_setup() -> [u64; 3] {
    [
        request(libc::TUNSETIFF),
        request(libc::TUNSETVNETHDRSZ),
        request(libc::TUNSETOFFLOAD),
    ]
}

/// The VMM thread: KVM system, VM and vCPU setup (it builds and restores
/// vCPUs before their threads start), taps, the terminal, non-blocking I/O.
pub fn vmm() -> Vec<u64> {
    let mut requests = vec![
        KVM_GET_API_VERSION(),
        KVM_CREATE_VM(),
        KVM_CHECK_EXTENSION(),
        KVM_GET_VCPU_MMAP_SIZE(),
        KVM_CREATE_VCPU(),
        KVM_GET_DIRTY_LOG(),
        KVM_SET_USER_MEMORY_REGION(),
        KVM_IRQFD(),
        KVM_IOEVENTFD(),
        KVM_ENABLE_CAP(),
        KVM_CREATE_DEVICE(),
        KVM_SET_DEVICE_ATTR(),
        KVM_GET_DEVICE_ATTR(),
        KVM_HAS_DEVICE_ATTR(),
        request(libc::TCGETS),
        request(libc::TCSETS),
        request(libc::TCSETSW),
        request(libc::FIONBIO),
    ];
    requests.extend(tap_setup());
    requests.extend(vcpu_state());
    requests.extend(arch::seccomp::vm_ioctls());
    requests
}

/// A vCPU thread: KVM_RUN, its state (saved and restored on the thread),
/// and the tap offloads a guest's feature choice sets.
pub fn vcpu() -> Vec<u64> {
    let mut requests = vec![KVM_RUN(), request(libc::TUNSETOFFLOAD)];
    requests.extend(vcpu_state());
    requests
}

/// The API thread makes its accepted sockets non-blocking.
pub fn api() -> Vec<u64> {
    vec![request(libc::FIONBIO)]
}

/// The device loop makes the host connections vsock accepts non-blocking.
pub fn devices() -> Vec<u64> {
    vec![request(libc::FIONBIO)]
}

fn vcpu_state() -> Vec<u64> {
    let mut requests = vec![
        KVM_GET_MP_STATE(),
        KVM_SET_MP_STATE(),
        KVM_GET_ONE_REG(),
        KVM_SET_ONE_REG(),
    ];
    requests.extend(arch::seccomp::vcpu_ioctls());
    requests
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_are_the_kernels() {
        // Values from <linux/kvm.h> as the kernel defines them; sizes of
        // these structures are the same on x86_64 and aarch64.
        assert_eq!(KVM_RUN(), 0xae80);
        assert_eq!(KVM_CREATE_VM(), 0xae01);
        assert_eq!(KVM_SET_USER_MEMORY_REGION(), 0x4020_ae46);
        assert_eq!(KVM_IRQFD(), 0x4020_ae76);
        assert_eq!(KVM_IOEVENTFD(), 0x4040_ae79);
        assert_eq!(KVM_GET_MP_STATE(), 0x8004_ae98);
        assert_eq!(KVM_SET_DEVICE_ATTR(), 0x4018_aee1);
    }
}
