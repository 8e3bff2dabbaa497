//! Reduces a sandboxed `RUN` step's capabilities to Docker's default set: the bounding set first
//! (so nothing the command executes can regain more), then the effective and permitted sets,
//! with the inheritable and ambient sets emptied. It never raises a capability.
//!
//! Written with raw `prctl`/`capset` rather than the `caps` crate: the bounding set must be
//! walked by number up to the running kernel's last capability (a list compiled into a crate
//! would miss newer ones), the three other sets are one `capset`, and the init reports every
//! failure with its errno, which that crate's string errors do not carry.

use std::io;

/// Docker's default capabilities (moby's `oci/caps/defaults.go`), by number (linux/capability.h).
const DOCKER_DEFAULT_CAPS: [u32; 14] = [
    0,  // CHOWN
    1,  // DAC_OVERRIDE
    3,  // FOWNER
    4,  // FSETID
    5,  // KILL
    6,  // SETGID
    7,  // SETUID
    8,  // SETPCAP
    10, // NET_BIND_SERVICE
    13, // NET_RAW
    18, // SYS_CHROOT
    27, // MKNOD: kept as in Docker; the root is mounted nodev, so a node made there opens nothing
    29, // AUDIT_WRITE
    31, // SETFCAP
];

/// The set as a mask (`0x00000000a80425fb`, what `CapBnd` shows in a Docker container).
pub(super) const DOCKER_DEFAULT_MASK: u64 = {
    let mut mask = 0u64;
    let mut i = 0;
    while i < DOCKER_DEFAULT_CAPS.len() {
        mask |= 1 << DOCKER_DEFAULT_CAPS[i];
        i += 1;
    }
    mask
};

/// Highest capability number any kernel can have in a 64-bit mask.
const MAX_CAP: u32 = 63;

/// Drop every capability outside the default set from the bounding set. Needs `CAP_SETPCAP`.
pub(super) fn drop_bounding() -> io::Result<()> {
    for cap in 0..=MAX_CAP {
        if DOCKER_DEFAULT_MASK & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments only reads and changes this thread's credentials.
        let held = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) };
        match held {
            0 => continue,
            1 => {}
            // EINVAL: past the kernel's last capability, so there is nothing more to drop.
            _ if io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) => break,
            _ => return Err(io::Error::last_os_error()),
        }
        // SAFETY: as above.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `struct __user_cap_header_struct` (linux/capability.h).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`; version 3 takes two of them (low and high 32 bits).
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `CAP_SETPCAP`, which dropping from the bounding set needs.
pub(super) const CAP_SETPCAP: u32 = 8;

/// Whether this process has `cap` in its effective set.
pub(super) fn effective(cap: u32) -> io::Result<bool> {
    let (data, _) = capget()?;
    let word = data[(cap / 32) as usize].effective;
    Ok(word & (1 << (cap % 32)) != 0)
}

fn capget() -> io::Result<([CapData; 2], CapHeader)> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and a two-element array, the layout capget(2) documents for version 3.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((data, header))
}

/// Effective and permitted become the default set (less anything this process lacks), the
/// inheritable set is emptied (as runc does since CVE-2022-24769), and the ambient set cleared.
/// After this, `setuid` to a non-root user empties effective and permitted as usual.
pub(super) fn restrict() -> io::Result<()> {
    let (mut data, mut header) = capget()?;
    let permitted = u64::from(data[0].permitted) | u64::from(data[1].permitted) << 32;
    let keep = permitted & DOCKER_DEFAULT_MASK;
    for (i, word) in data.iter_mut().enumerate() {
        let bits = (keep >> (32 * i)) as u32;
        *word = CapData {
            effective: bits,
            permitted: bits,
            inheritable: 0,
        };
    }
    // SAFETY: as above; capset only reads the header and data.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: prctl with integer arguments on this thread's ambient set.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    // EINVAL: a kernel without ambient capabilities (before 4.3) has none to clear.
    if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `CAP_MKNOD`, which creating a character or block device needs.
#[cfg(test)]
pub(crate) const CAP_MKNOD: u32 = 27;

/// Drop `cap` from the calling thread's effective set only (capabilities are per thread): for
/// tests that must act without it, on a thread of their own.
#[cfg(test)]
pub(crate) fn drop_effective_on_this_thread(cap: u32) -> io::Result<()> {
    let (mut data, mut header) = capget()?;
    data[(cap / 32) as usize].effective &= !(1 << (cap % 32));
    // SAFETY: as in `restrict`; capset only reads the header and data, and with pid 0 changes
    // the calling thread alone.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_set_is_dockers() {
        assert_eq!(DOCKER_DEFAULT_MASK, 0x0000_0000_a804_25fb);
    }
}
