//! Process memory from /proc/PID/smaps: total resident memory, and the
//! resident part of the guest-memory mapping, so that the VMM's own
//! overhead is their difference.

/// One mapping's size and resident size, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// Virtual size.
    pub size_kib: u64,
    /// Resident size.
    pub rss_kib: u64,
}

/// Parses smaps text into its mappings.
pub fn parse(smaps: &str) -> Vec<Mapping> {
    let mut mappings = Vec::new();
    let mut current: Option<Mapping> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        let value = || -> u64 {
            fields
                .clone()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        match first {
            "Size:" => {
                if let Some(done) = current.take() {
                    mappings.push(done);
                }
                current = Some(Mapping {
                    size_kib: value(),
                    rss_kib: 0,
                });
            }
            "Rss:" => {
                if let Some(mapping) = current.as_mut() {
                    mapping.rss_kib = value();
                }
            }
            _ => {}
        }
    }
    mappings.extend(current);
    mappings
}

/// Memory of a VMM process, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmmMemory {
    /// Resident memory of the whole process.
    pub total_rss_kib: u64,
    /// Resident memory of the guest RAM mapping.
    pub guest_rss_kib: u64,
}

impl VmmMemory {
    /// What the VMM itself uses: everything but guest RAM.
    pub fn overhead_kib(&self) -> u64 {
        self.total_rss_kib.saturating_sub(self.guest_rss_kib)
    }
}

/// Splits a process's memory: the guest RAM mapping is the largest one of at
/// least `guest_mem_kib` (both brique and QEMU map guest RAM in one piece,
/// QEMU with a little alignment slack).
pub fn vmm_memory(mappings: &[Mapping], guest_mem_kib: u64) -> VmmMemory {
    let total_rss_kib = mappings.iter().map(|m| m.rss_kib).sum();
    let guest_rss_kib = mappings
        .iter()
        .filter(|m| m.size_kib >= guest_mem_kib)
        .max_by_key(|m| m.size_kib)
        .map_or(0, |m| m.rss_kib);
    VmmMemory {
        total_rss_kib,
        guest_rss_kib,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0100000 r-xp 00000000 fd:01 123   /usr/bin/vmm
Size:               1024 kB
Rss:                 800 kB
Pss:                 800 kB
7f0000000000-7f0008000000 rw-p 00000000 00:00 0
Size:             131072 kB
KernelPageSize:        4 kB
Rss:               20480 kB
7f0010000000-7f0010021000 rw-p 00000000 00:00 0
Size:                132 kB
Rss:                  64 kB
";

    #[test]
    fn guest_ram_is_the_large_mapping() {
        let mappings = parse(SMAPS);
        assert_eq!(mappings.len(), 3);
        assert_eq!(
            mappings[1],
            Mapping {
                size_kib: 131072,
                rss_kib: 20480
            }
        );
        let memory = vmm_memory(&mappings, 128 * 1024);
        assert_eq!(memory.total_rss_kib, 800 + 20480 + 64);
        assert_eq!(memory.guest_rss_kib, 20480);
        assert_eq!(memory.overhead_kib(), 864);
    }

    #[test]
    fn no_guest_mapping_means_all_overhead() {
        let memory = vmm_memory(&parse(SMAPS), 1 << 30);
        assert_eq!(memory.guest_rss_kib, 0);
        assert_eq!(memory.overhead_kib(), memory.total_rss_kib);
    }
}
