//! The seccomp filter of a sandboxed `RUN` step: Docker's default profile for the syscalls that
//! lead out of a container (mounts, namespaces, kernel modules, kexec, BPF, file handles, keys,
//! clock and swap), each answered with `EPERM`; everything else is allowed. It only builds and
//! installs the filter; deciding when (after the mounts, before the capability drop) is the
//! init's job.
//!
//! # Why the BPF is written here and not with `seccompiler`
//!
//! `seccompiler` (Firecracker's) builds filters for one architecture and kills the process on
//! any syscall made under another audit architecture, so an i386 binary in the image, or
//! `int 0x80` from a 64-bit one, would die at its first syscall; it also ignores x32 syscall
//! numbers, which would walk around a deny list, and its `apply_filter` always sets
//! `no_new_privs`, which breaks `su`, `sudo` and every other setuid program a build may run
//! (Docker does not set it). A deny list over three ABIs is a flat sequence of compare-and-return
//! instructions, short enough to write and to test here with a tiny interpreter.

use libc::sock_filter;

/// `AUDIT_ARCH_*` values (linux/audit.h): ELF machine, 64-bit and little-endian bits.
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
const AUDIT_ARCH_I386: u32 = 3 | 0x4000_0000;
#[cfg(any(target_arch = "aarch64", test))]
const AUDIT_ARCH_AARCH64: u32 = 183 | 0x8000_0000 | 0x4000_0000;

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("the RUN seccomp filter has syscall tables for x86_64 and aarch64 only");

/// x32 syscalls are x86_64 numbers with this bit set; the filter clears it before comparing, so
/// the x32 ABI is held to the same list (its own syscalls 512 and up include none of the denied).
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// `clone` flags that create namespaces (Docker filters the same mask on `clone`'s first
/// argument). `CLONE_NEWTIME` is only reachable through `unshare` and `clone3`, both refused.
const CLONE_NAMESPACE_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u32;

/// Offsets into `struct seccomp_data`: nr, arch, then the low word of the first argument on a
/// little-endian machine.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const DATA_ARG0_LOW: u32 = 16;

const RET_ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const RET_EPERM: u32 = libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32 & libc::SECCOMP_RET_DATA);
/// `clone3` passes its flags in memory a filter cannot read, so like Docker it answers ENOSYS:
/// the C library then falls back to `clone`, whose flags are checked.
const RET_ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | (libc::ENOSYS as u32 & libc::SECCOMP_RET_DATA);
/// An architecture with no table here (32-bit ARM on arm64): nothing may run under it.
const RET_KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;

/// One ABI's syscall numbers for the filter.
struct Abi {
    arch: u32,
    /// Denied outright.
    denied: &'static [&'static [u32]],
    clone: u32,
    clone3: u32,
    /// Clear [`X32_SYSCALL_BIT`] before comparing.
    fold_x32: bool,
}

/// Syscalls that reach outside a container, or the kernel itself, in the native numbering.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const NATIVE_DENIED: &[u32] = &[
    libc::SYS_mount as u32,
    libc::SYS_umount2 as u32,
    libc::SYS_pivot_root as u32,
    libc::SYS_unshare as u32,
    libc::SYS_setns as u32,
    libc::SYS_mount_setattr as u32,
    libc::SYS_fsopen as u32,
    libc::SYS_fsconfig as u32,
    libc::SYS_fsmount as u32,
    libc::SYS_fspick as u32,
    libc::SYS_move_mount as u32,
    libc::SYS_open_tree as u32,
    libc::SYS_kexec_load as u32,
    libc::SYS_kexec_file_load as u32,
    libc::SYS_init_module as u32,
    libc::SYS_finit_module as u32,
    libc::SYS_delete_module as u32,
    libc::SYS_bpf as u32,
    // name_to_handle_at stays allowed, as in Docker: a handle is useless without this one.
    libc::SYS_open_by_handle_at as u32,
    libc::SYS_perf_event_open as u32,
    libc::SYS_keyctl as u32,
    libc::SYS_add_key as u32,
    libc::SYS_request_key as u32,
    libc::SYS_reboot as u32,
    libc::SYS_swapon as u32,
    libc::SYS_swapoff as u32,
    libc::SYS_syslog as u32,
    libc::SYS_acct as u32,
    libc::SYS_settimeofday as u32,
    libc::SYS_clock_settime as u32,
    libc::SYS_userfaultfd as u32,
    libc::SYS_lookup_dcookie as u32,
    libc::SYS_quotactl as u32,
];

/// The native architecture, and syscalls only it has: port I/O and the old library loader on x86.
#[cfg(target_arch = "x86_64")]
const NATIVE_ARCH: (u32, &[u32]) = (
    AUDIT_ARCH_X86_64,
    &[
        libc::SYS_iopl as u32,
        libc::SYS_ioperm as u32,
        libc::SYS_uselib as u32,
    ],
);
#[cfg(target_arch = "aarch64")]
const NATIVE_ARCH: (u32, &[u32]) = (AUDIT_ARCH_AARCH64, &[]);

const NATIVE: Abi = Abi {
    arch: NATIVE_ARCH.0,
    denied: &[NATIVE_DENIED, NATIVE_ARCH.1],
    clone: libc::SYS_clone as u32,
    clone3: libc::SYS_clone3 as u32,
    fold_x32: cfg!(target_arch = "x86_64"),
};

/// The same syscalls in the i386 numbering (arch/x86/entry/syscalls/syscall_32.tbl), which the
/// libc crate does not expose on x86_64; `umount`, `stime` and `clock_settime64` exist only here.
#[cfg(target_arch = "x86_64")]
const I386: Abi = Abi {
    arch: AUDIT_ARCH_I386,
    denied: &[&[
        21,  // mount
        22,  // umount
        52,  // umount2
        217, // pivot_root
        310, // unshare
        346, // setns
        442, // mount_setattr
        430, // fsopen
        431, // fsconfig
        432, // fsmount
        433, // fspick
        429, // move_mount
        428, // open_tree
        283, // kexec_load
        128, // init_module
        350, // finit_module
        129, // delete_module
        357, // bpf
        342, // open_by_handle_at
        336, // perf_event_open
        288, // keyctl
        286, // add_key
        287, // request_key
        88,  // reboot
        87,  // swapon
        115, // swapoff
        103, // syslog
        51,  // acct
        79,  // settimeofday
        25,  // stime
        264, // clock_settime
        404, // clock_settime64
        374, // userfaultfd
        253, // lookup_dcookie
        131, // quotactl
        110, // iopl
        101, // ioperm
        86,  // uselib
        166, // vm86
        113, // vm86old
    ]],
    clone: 120,
    clone3: 435,
    fold_x32: false,
};

#[cfg(target_arch = "x86_64")]
const ABIS: &[Abi] = &[NATIVE, I386];
#[cfg(target_arch = "aarch64")]
const ABIS: &[Abi] = &[NATIVE];

/// The whole filter: dispatch on the audit architecture, then that ABI's deny list.
pub(super) fn program() -> Vec<sock_filter> {
    let sections: Vec<Vec<sock_filter>> = ABIS.iter().map(section).collect();
    let mut prog = vec![stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, DATA_ARCH)];
    // Dispatch: per ABI "jeq arch; ja to its section", then kill for any other architecture.
    // Instruction 0 is the load, so ABI i's `ja` is at 2i + 2 and jumps relative to 2i + 3; the
    // sections start after the final kill, at 2n + 2.
    let mut section_start = 2 * ABIS.len() + 2;
    for (i, abi) in ABIS.iter().enumerate() {
        prog.push(jump(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            abi.arch,
            0,
            1,
        ));
        prog.push(stmt(
            libc::BPF_JMP | libc::BPF_JA,
            (section_start - (2 * i + 3)) as u32,
        ));
        section_start += sections[i].len();
    }
    prog.push(stmt(libc::BPF_RET | libc::BPF_K, RET_KILL));
    for s in sections {
        prog.extend(s);
    }
    prog
}

/// One ABI: load the number, compare against each denied one, then `clone3`, then `clone`'s
/// namespace flags; allow whatever falls through.
fn section(abi: &Abi) -> Vec<sock_filter> {
    let ret = |k| stmt(libc::BPF_RET | libc::BPF_K, k);
    let jeq = |k, jt, jf| jump(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, k, jt, jf);
    let mut s = vec![stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, DATA_NR)];
    if abi.fold_x32 {
        s.push(stmt(
            libc::BPF_ALU | libc::BPF_AND | libc::BPF_K,
            !X32_SYSCALL_BIT,
        ));
    }
    for &nr in abi.denied.iter().copied().flatten() {
        s.push(jeq(nr, 0, 1));
        s.push(ret(RET_EPERM));
    }
    s.push(jeq(abi.clone3, 0, 1));
    s.push(ret(RET_ENOSYS));
    // clone: false → skip to the final allow; flags & mask == 0 → allow; otherwise EPERM.
    s.push(jeq(abi.clone, 0, 4));
    s.push(stmt(
        libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
        DATA_ARG0_LOW,
    ));
    s.push(stmt(
        libc::BPF_ALU | libc::BPF_AND | libc::BPF_K,
        CLONE_NAMESPACE_FLAGS,
    ));
    s.push(jeq(0, 1, 0));
    s.push(ret(RET_EPERM));
    s.push(ret(RET_ALLOW));
    s
}

fn stmt(code: u32, k: u32) -> sock_filter {
    jump(code, k, 0, 0)
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// Install the filter on the calling thread. The caller must hold `CAP_SYS_ADMIN`: without it
/// the kernel demands `no_new_privs`, which this sandbox deliberately does not set.
pub(super) fn install() -> std::io::Result<()> {
    let mut filter = program();
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `filter`, alive for the call; the kernel copies the program.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// Runs the classic-BPF subset the filter uses against one `seccomp_data`.
    fn eval(prog: &[sock_filter], arch: u32, nr: u32, arg0: u64) -> u32 {
        let load = |off: u32| match off {
            DATA_NR => nr,
            DATA_ARCH => arch,
            DATA_ARG0_LOW => arg0 as u32,
            other => panic!("unexpected load at {other}"),
        };
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let ins = &prog[pc];
            let code = u32::from(ins.code);
            pc += 1;
            match code {
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => acc = load(ins.k),
                c if c == libc::BPF_ALU | libc::BPF_AND | libc::BPF_K => acc &= ins.k,
                c if c == libc::BPF_JMP | libc::BPF_JA => pc += ins.k as usize,
                c if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => {
                    pc += usize::from(if acc == ins.k { ins.jt } else { ins.jf })
                }
                c if c == libc::BPF_RET | libc::BPF_K => return ins.k,
                other => panic!("unexpected instruction {other:#x}"),
            }
        }
    }

    #[test]
    fn escape_syscalls_are_refused_on_every_abi() {
        let prog = program();
        assert!(prog.len() < libc::BPF_MAXINSNS as usize);
        let native = |nr: i64| eval(&prog, AUDIT_ARCH_X86_64, nr as u32, 0);
        for nr in [
            libc::SYS_mount,
            libc::SYS_unshare,
            libc::SYS_pivot_root,
            libc::SYS_bpf,
            libc::SYS_open_by_handle_at,
            libc::SYS_init_module,
            libc::SYS_open_tree,
        ] {
            assert_eq!(native(nr), RET_EPERM, "syscall {nr}");
            // The same number through the x32 ABI.
            assert_eq!(
                eval(&prog, AUDIT_ARCH_X86_64, nr as u32 | X32_SYSCALL_BIT, 0),
                RET_EPERM
            );
        }
        for nr in [
            libc::SYS_read,
            libc::SYS_chroot,
            libc::SYS_ptrace,
            libc::SYS_mknod,
            libc::SYS_name_to_handle_at,
        ] {
            assert_eq!(native(nr), RET_ALLOW, "syscall {nr}");
        }
        assert_eq!(native(libc::SYS_clone3), RET_ENOSYS);
        // i386: mount, umount and unshare are refused; read (3) and chroot (61) are not.
        for nr in [21, 22, 310] {
            assert_eq!(eval(&prog, AUDIT_ARCH_I386, nr, 0), RET_EPERM);
        }
        for nr in [3, 61] {
            assert_eq!(eval(&prog, AUDIT_ARCH_I386, nr, 0), RET_ALLOW);
        }
        assert_eq!(eval(&prog, AUDIT_ARCH_AARCH64, 0, 0), RET_KILL);
    }

    #[test]
    fn clone_is_refused_only_with_namespace_flags() {
        let prog = program();
        let fork_flags = (libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID) as u64 | 17;
        let thread_flags = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
        for (arch, clone) in [
            (AUDIT_ARCH_X86_64, libc::SYS_clone as u32),
            (AUDIT_ARCH_I386, 120),
        ] {
            assert_eq!(eval(&prog, arch, clone, fork_flags), RET_ALLOW);
            assert_eq!(eval(&prog, arch, clone, thread_flags), RET_ALLOW);
            for ns in [libc::CLONE_NEWUSER, libc::CLONE_NEWNS, libc::CLONE_NEWNET] {
                assert_eq!(
                    eval(&prog, arch, clone, fork_flags | ns as u64),
                    RET_EPERM,
                    "flag {ns:#x}"
                );
            }
        }
    }
}
