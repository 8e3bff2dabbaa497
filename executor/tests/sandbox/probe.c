/* Probe run inside a RUN sandbox by executor/tests/sandbox.rs, compiled there with gcc -static.
 * Usage: probe OUTFILE COMMAND [ARGS]. Each attempt writes "name=errno" (0 = it worked) to
 * OUTFILE. It never writes to a device, a kernel tunable or anything outside /out, even when an
 * attempt unexpectedly succeeds: it only opens, and closes again. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

static FILE *out;

static void report(const char *name, long rc) {
    fprintf(out, "%s=%d\n", name, rc < 0 ? errno : 0);
}

/* A raw syscall; -1 with errno on failure, as syscall(2) returns. */
#define TRY(name, ...) report(name, syscall(__VA_ARGS__))

/* clone(2) with the given flags; a child that starts exits at once. */
static void try_clone(const char *name, long flags) {
    long pid = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0)
        _exit(0);
    if (pid > 0)
        waitpid((pid_t)pid, NULL, 0);
    report(name, pid);
}

/* mount through the i386 ABI (int 0x80, syscall 21) in a child: a kernel without 32-bit
 * emulation kills it, which is reported as "signal". */
static void try_i386_mount(void) {
    pid_t pid = fork();
    if (pid == 0) {
        long ret;
        __asm__ volatile("int $0x80" : "=a"(ret) : "a"(21L), "b"(0L), "c"(0L), "d"(0L) : "memory");
        _exit(ret < 0 && ret > -4096 ? (int)-ret : 0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFEXITED(status))
        fprintf(out, "i386_mount=%d\n", WEXITSTATUS(status));
    else
        fprintf(out, "i386_mount=signal\n");
}

static int syscalls(void) {
    TRY("mount", SYS_mount, "none", "/mnt", "tmpfs", 0L, NULL);
    TRY("umount2", SYS_umount2, "/proc", (long)MNT_DETACH);
    TRY("pivot_root", SYS_pivot_root, ".", ".");
    TRY("unshare_user", SYS_unshare, (long)CLONE_NEWUSER);
    TRY("unshare_mount", SYS_unshare, (long)CLONE_NEWNS);
    int ns = open("/proc/self/ns/net", O_RDONLY);
    TRY("setns", SYS_setns, (long)ns, 0L);
    try_clone("clone_newuser", CLONE_NEWUSER);
    try_clone("clone_newns", CLONE_NEWNS);
    try_clone("clone_plain", 0);
    TRY("clone3", SYS_clone3, NULL, 0L);
    TRY("bpf", SYS_bpf, 5L /* BPF_PROG_LOAD */, NULL, 0L);
    TRY("open_by_handle_at", SYS_open_by_handle_at, (long)AT_FDCWD, NULL, 0L);
    TRY("init_module", SYS_init_module, NULL, 0L, "");
    TRY("finit_module", SYS_finit_module, -1L, "", 0L);
    TRY("kexec_load", SYS_kexec_load, 0L, 0L, NULL, 0L);
    TRY("keyctl", SYS_keyctl, 0L, 0L, 0L, 0L, 0L);
    TRY("perf_event_open", SYS_perf_event_open, NULL, 0L, -1L, -1L, 0L);
    TRY("fsopen", SYS_fsopen, "tmpfs", 0L);
    TRY("open_tree", SYS_open_tree, (long)AT_FDCWD, "/", 0L);
    /* The x32 ABI: the same number with bit 30 set. */
    TRY("x32_mount", 0x40000000L | SYS_mount, "none", "/mnt", "tmpfs", 0L, NULL);
    try_i386_mount();
    /* Allowed, as in Docker: chroot (CAP_SYS_CHROOT) inside the sandbox. */
    TRY("chroot", SYS_chroot, "/");
    return 0;
}

/* The double-chroot escape: chroot into a subdirectory, climb out with "..", chroot to where
 * that lands. Under plain chroot() it reaches the host's root; after pivot_root it cannot. */
static int escape(const char *marker, const char *secret) {
    int outdir = open("/out", O_RDONLY | O_DIRECTORY);
    mkdir("/escape-x", 0755);
    report("chroot_in", syscall(SYS_chroot, "/escape-x"));
    for (int i = 0; i < 64; i++)
        if (chdir("..") != 0)
            break;
    report("chroot_out", syscall(SYS_chroot, "."));
    int fd = open(marker, O_WRONLY | O_CREAT | O_EXCL, 0644);
    report("write_marker", fd);
    if (fd >= 0) {
        write(fd, "escaped\n", 8);
        close(fd);
    }
    fd = open(secret, O_RDONLY);
    report("read_secret", fd);
    if (fd >= 0) {
        char buf[256];
        ssize_t n = read(fd, buf, sizeof buf);
        close(fd);
        int copy = openat(outdir, "stolen", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (copy >= 0 && n > 0) {
            write(copy, buf, (size_t)n);
            close(copy);
        }
    }
    return 0;
}

/* mknod a block device in each writable place, then try to open and mount it; the node is
 * removed again. Opening is read-only and nothing is ever read or written. */
static int nodes(unsigned major_nr, unsigned minor_nr) {
    const char *dirs[][2] = {{"/", "root"}, {"/dev", "dev"}, {"/dev/shm", "shm"}};
    for (unsigned i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
        char path[64], name[64];
        snprintf(path, sizeof path, "%s/blk-probe", dirs[i][0]);
        snprintf(name, sizeof name, "mknod_%s", dirs[i][1]);
        int rc = mknod(path, S_IFBLK | 0600, makedev(major_nr, minor_nr));
        report(name, rc);
        if (rc != 0)
            continue;
        snprintf(name, sizeof name, "open_%s", dirs[i][1]);
        int fd = open(path, O_RDONLY);
        report(name, fd);
        if (fd >= 0)
            close(fd);
        snprintf(name, sizeof name, "mount_%s", dirs[i][1]);
        mkdir("/mnt-probe", 0755);
        report(name, mount(path, "/mnt-probe", "ext2", MS_RDONLY, NULL));
        umount2("/mnt-probe", MNT_DETACH);
        rmdir("/mnt-probe");
        unlink(path);
    }
    return 0;
}

/* Open for writing and close again: never writes a byte. */
static int open_write(int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        int fd = open(argv[i], O_WRONLY);
        report(argv[i], fd);
        if (fd >= 0)
            close(fd);
    }
    return 0;
}

/* Fork children that sleep until at most `max` exist or fork fails; exiting ends them all, as
 * this process is PID 1 of its namespace. Bounded so that a missing limit cannot hurt the host. */
static int forks(long max) {
    long n = 0;
    int err = 0;
    for (; n < max; n++) {
        pid_t pid = fork();
        if (pid == 0) {
            pause();
            _exit(0);
        }
        if (pid < 0) {
            err = errno;
            break;
        }
    }
    fprintf(out, "forked=%ld\nfork_errno=%d\n", n, err);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3)
        return 2;
    out = fopen(argv[1], "w");
    if (!out)
        return 3;
    setvbuf(out, NULL, _IONBF, 0);
    const char *cmd = argv[2];
    if (!strcmp(cmd, "syscalls"))
        return syscalls();
    if (!strcmp(cmd, "escape") && argc == 5)
        return escape(argv[3], argv[4]);
    if (!strcmp(cmd, "mknod") && argc == 5)
        return nodes((unsigned)atoi(argv[3]), (unsigned)atoi(argv[4]));
    if (!strcmp(cmd, "openw"))
        return open_write(argc - 3, argv + 3);
    if (!strcmp(cmd, "forks") && argc == 4)
        return forks(atol(argv[3]));
    return 2;
}
