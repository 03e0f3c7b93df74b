//! aarch64's part of the seccomp filters. The arm64 kernel has only the
//! newer forms of the file and wait calls (the generic lists hold them), so
//! what remains are the KVM ioctls of the arm64 vCPU and its GIC.

#![allow(non_snake_case)]

use crate::seccomp::ioctls::{KVMIO, KVM_GET_DEVICE_ATTR, KVM_SET_DEVICE_ATTR};
use crate::seccomp::Syscall;
use kvm_bindings::{kvm_reg_list, kvm_vcpu_init};
use vmm_sys_util::{ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

/// Every thread.
pub fn every_thread() -> &'static [Syscall] {
    &[]
}

/// The VMM thread.
pub fn vmm_thread() -> &'static [Syscall] {
    &[]
}

/// Threads that wait on an epoll set (API server, device loop).
pub fn waiting_threads() -> &'static [Syscall] {
    &[]
}

/// Calls no thread may make, named in violation messages.
pub fn notable() -> &'static [Syscall] {
    &[]
}

ioctl_iow_nr!(KVM_ARM_VCPU_INIT, KVMIO, 0xae, kvm_vcpu_init);
ioctl_ior_nr!(KVM_ARM_PREFERRED_TARGET, KVMIO, 0xaf, kvm_vcpu_init);
ioctl_iowr_nr!(KVM_GET_REG_LIST, KVMIO, 0xb0, kvm_reg_list);
ioctl_iow_nr!(KVM_ARM_VCPU_FINALIZE, KVMIO, 0xc2, std::os::raw::c_int);

/// System and VM requests beyond the generic ones (the GIC is a KVM
/// device, created and set through the generic device requests).
pub fn vm_ioctls() -> Vec<u64> {
    vec![KVM_ARM_PREFERRED_TARGET()]
}

/// A vCPU's init, registers (one by one, through the generic
/// KVM_GET/SET_ONE_REG) and the GIC redistributor state saved with it.
pub fn vcpu_ioctls() -> Vec<u64> {
    vec![
        KVM_ARM_VCPU_INIT(),
        KVM_GET_REG_LIST(),
        KVM_ARM_VCPU_FINALIZE(),
        KVM_GET_DEVICE_ATTR(),
        KVM_SET_DEVICE_ATTR(),
    ]
}
