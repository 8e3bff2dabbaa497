//! Times snapshots of a large root: the steady-state cost of a build step that changes one file
//! (walk + compare + a tiny layer) and the first snapshot that writes every file. Measures only;
//! it creates its trees in temporary directories under the given bases and removes them.
//!
//! Run (release, shared target dir), on tmpfs and on a disk-backed filesystem:
//!
//! ```text
//! CARGO_TARGET_DIR=/var/cache/kiln/target-dev \
//!     cargo run --release -p kiln-executor --example snapshot_bench -- /dev/shm /var/tmp
//! ```
//!
//! `KILN_BENCH_FILES` (default 100000) and `KILN_BENCH_DIRS` (default 1000) size the tree;
//! `KILN_BENCH_DEPTH` (default 0) puts the directories that many levels further down (image
//! trees are deeper than two levels: `usr/lib/python3/dist-packages/...`);
//! `KILN_BENCH_STEPS` (default 10) sets how many one-file steps are timed, and
//! `KILN_BENCH_FIRST=0` skips the first-snapshot timings (for profiling the steps alone).

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use kiln_executor::snapshot::{Compression, LayerOptions, Snapshotter};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `files` small files spread evenly over `dirs` directories under `root/tree/<nest>`.
fn make_tree(root: &Path, nest: &str, files: usize, dirs: usize) {
    let per_dir = files.div_ceil(dirs);
    let mut made = 0;
    for d in 0..dirs {
        let dir = root.join(format!("tree/{nest}d{d:04}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..per_dir {
            if made == files {
                return;
            }
            fs::write(dir.join(format!("f{f:04}")), format!("file {d}/{f}\n")).unwrap();
            made += 1;
        }
    }
}

/// User + system CPU time of the whole process so far. Reported beside wall time because the
/// benchmark usually shares its cores with other work, which inflates wall time only.
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct it is given and only reads `who`.
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Wall and CPU time of one run of `f`.
fn timed<T>(f: impl FnOnce() -> T) -> (T, (Duration, Duration)) {
    let (wall, cpu) = (Instant::now(), cpu_time());
    let out = f();
    (out, (wall.elapsed(), cpu_time() - cpu))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn stats(times: &[(Duration, Duration)]) -> String {
    let mut wall: Vec<_> = times.iter().map(|t| t.0).collect();
    let mut cpu: Vec<_> = times.iter().map(|t| t.1).collect();
    wall.sort();
    cpu.sort();
    format!(
        "wall min {:6.1} median {:6.1} max {:6.1} ms | cpu median {:6.1} ms (n={})",
        ms(wall[0]),
        ms(wall[wall.len() / 2]),
        ms(wall[wall.len() - 1]),
        ms(cpu[cpu.len() / 2]),
        times.len()
    )
}

fn bench(base: &Path, nest: &str, files: usize, dirs: usize, steps: usize, first: bool) {
    let work = tempfile::Builder::new()
        .prefix("kiln-snapshot-bench-")
        .tempdir_in(base)
        .unwrap();
    let root = work.path().join("root");
    let staging = work.path().join("staging");
    let out = work.path().join("layers");
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(&staging).unwrap();
    let started = Instant::now();
    make_tree(&staging, nest, files, dirs);
    println!(
        "{}: {files} files in {dirs} directories at depth {} created in {:.1} s",
        base.display(),
        nest.len() / 2 + 2,
        started.elapsed().as_secs_f64()
    );

    // First snapshot: every file is new. The tree is moved in whole so the "before" state is
    // empty without creating it twice.
    let compressions = [
        ("gzip 6", Compression::Gzip { level: 6 }),
        ("gzip 0", Compression::Gzip { level: 0 }),
    ];
    for (label, compression) in compressions.into_iter().filter(|_| first) {
        let opts = LayerOptions {
            reproducible: false,
            compression,
        };
        let mut snap = Snapshotter::new(&root, Vec::new()).unwrap();
        fs::rename(staging.join("tree"), root.join("tree")).unwrap();
        let (layer, took) = timed(|| snap.snapshot_layer(&out, &opts).unwrap().unwrap());
        println!(
            "  first snapshot, all files ({label}): wall {:6.1} ms | cpu {:6.1} ms, layer {} bytes",
            ms(took.0),
            ms(took.1),
            layer.size
        );
        fs::remove_file(&layer.path).unwrap();
        fs::rename(root.join("tree"), staging.join("tree")).unwrap();
    }
    fs::rename(staging.join("tree"), root.join("tree")).unwrap();

    let mut times = Vec::new();
    let mut snap = None;
    for _ in 0..3 {
        let (s, took) = timed(|| Snapshotter::new(&root, Vec::new()).unwrap());
        snap = Some(s);
        times.push(took);
    }
    println!("  Snapshotter::new (full scan):     {}", stats(&times));
    let mut snap = snap.unwrap();

    let opts = LayerOptions::default();
    let target = root.join(format!("tree/{nest}d{:04}/f0000", dirs / 2));
    let mut times = Vec::new();
    for i in 0..steps.max(1) {
        fs::write(&target, format!("changed {i}\n")).unwrap();
        let (layer, took) = timed(|| snap.snapshot_layer(&out, &opts).unwrap().expect("a layer"));
        times.push(took);
        fs::remove_file(&layer.path).unwrap();
    }
    println!("  snapshot_layer, one file changed: {}", stats(&times));

    let mut times = Vec::new();
    for _ in 0..5 {
        let (layer, took) = timed(|| snap.snapshot_layer(&out, &opts).unwrap());
        assert!(layer.is_none());
        times.push(took);
    }
    println!("  snapshot_layer, nothing changed:  {}", stats(&times));
}

fn main() {
    let files = env_or("KILN_BENCH_FILES", 100_000);
    let dirs = env_or("KILN_BENCH_DIRS", 1000).max(1);
    let steps = env_or("KILN_BENCH_STEPS", 10);
    let first = env_or("KILN_BENCH_FIRST", 1) != 0;
    let nest = "n/".repeat(env_or("KILN_BENCH_DEPTH", 0));
    let bases: Vec<String> = std::env::args().skip(1).collect();
    let bases = if bases.is_empty() {
        vec!["/dev/shm".to_string(), "/var/tmp".to_string()]
    } else {
        bases
    };
    println!(
        "threads available: {}",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for base in bases {
        bench(Path::new(&base), &nest, files, dirs, steps, first);
    }
}
