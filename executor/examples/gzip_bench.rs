//! Compression throughput of the layer encoders on a file of your choice: flate2's single-threaded
//! gzip against Kiln's parallel gzip (1 thread and all cores) and zstd, at the levels that matter.
//! Prints MB/s of input and the output size, so a change of backend or block size is measured,
//! not guessed.
//!
//!   cargo run --release -p kiln-executor --example gzip_bench -- FILE [LEVEL...]
//!
//! FILE is read into memory first (so disk speed does not count); make one with e.g.
//! `tar -C / -cf /tmp/usr.tar usr/lib` or `head -c 400M /dev/urandom > /tmp/random`.

use std::io::Write;
use std::time::Instant;

use kiln_executor::pargz::{default_threads, ParGzEncoder};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: gzip_bench FILE [LEVEL...]");
        std::process::exit(2);
    };
    let levels: Vec<u32> = {
        let l: Vec<u32> = args.filter_map(|a| a.parse().ok()).collect();
        if l.is_empty() {
            vec![1, 6]
        } else {
            l
        }
    };
    let data = std::fs::read(&path).unwrap_or_else(|e| {
        eprintln!("reading {path}: {e}");
        std::process::exit(1);
    });
    let mb = data.len() as f64 / 1e6;
    println!("{path}: {mb:.1} MB, {} cores", default_threads());
    println!(
        "{:<28} {:>10} {:>12} {:>8}",
        "encoder", "MB/s", "output MB", "ratio"
    );
    let report = |name: String, secs: f64, out: usize| {
        println!(
            "{name:<28} {:>10.1} {:>12.2} {:>8.3}",
            mb / secs,
            out as f64 / 1e6,
            out as f64 / data.len() as f64
        );
    };
    for &level in &levels {
        let t = Instant::now();
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        e.write_all(&data).unwrap();
        let out = e.finish().unwrap().len();
        report(
            format!("flate2 gzip -{level}"),
            t.elapsed().as_secs_f64(),
            out,
        );
        for threads in [1, default_threads()] {
            let t = Instant::now();
            let mut e = ParGzEncoder::new(Vec::new(), level, threads);
            for chunk in data.chunks(64 * 1024) {
                e.write_all(chunk).unwrap();
            }
            let out = e.finish().unwrap().len();
            report(
                format!("kiln pargz -{level} x{threads}"),
                t.elapsed().as_secs_f64(),
                out,
            );
        }
    }
    for level in [1, 3] {
        let t = Instant::now();
        let out = zstd::stream::encode_all(&data[..], level).unwrap().len();
        report(format!("zstd -{level}"), t.elapsed().as_secs_f64(), out);
    }
}
