//! The bounds on what a registry, a base image or a layer may make kiln-executor and kiln-warmer
//! read, hold or write: their defaults, how a bound is spelled on the command line (bytes, a
//! binary unit, or `unlimited`) and the largest compressed blob a decompressed bound allows. It
//! enforces nothing itself: the registry client checks manifests, configs and blobs, the
//! executor's unpacker checks layers.

use std::fmt;

/// Manifests, indexes and configs (`--max-manifest-size`): containerd refuses manifests over
/// 4 MiB too. Real manifests are a few KiB; a config with a long history some hundred KiB.
pub const DEFAULT_MAX_MANIFEST_SIZE: u64 = 4 << 20;
/// Decompressed bytes of one layer (`--max-layer-size`). The largest single layers of real
/// images (CUDA and ML frameworks) are a few GiB.
pub const DEFAULT_MAX_LAYER_SIZE: u64 = 10 << 30;
/// Decompressed bytes of every layer a build unpacks (`--max-build-size`). Above the
/// largest real images (tens of GiB), below what a node's disk holds, so that a hostile image
/// of many layers just under `--max-layer-size` each cannot fill a node's disk.
pub const DEFAULT_MAX_BUILD_SIZE: u64 = 50 << 30;
/// Entries (files, directories, links, whiteouts…) of one layer (`--max-layer-entries`). A full
/// Debian or Ubuntu base layer has some tens of thousands; a large toolchain layer a few hundred
/// thousand.
pub const DEFAULT_MAX_LAYER_ENTRIES: u64 = 1_000_000;

/// A bound from the command line: a number, or none at all (`unlimited`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(Option<u64>);

impl Limit {
    pub const UNLIMITED: Limit = Limit(None);

    pub const fn at(n: u64) -> Limit {
        Limit(Some(n))
    }

    /// The bound, `None` when unlimited.
    pub fn get(self) -> Option<u64> {
        self.0
    }

    /// The bound, or `u64::MAX` when unlimited.
    pub fn or_max(self) -> u64 {
        self.0.unwrap_or(u64::MAX)
    }

    /// Whether `n` goes past the bound.
    pub fn exceeded_by(self, n: u64) -> bool {
        self.0.is_some_and(|max| n > max)
    }
}

/// A size bound: plain bytes (`1048576`, `1048576B`), a binary unit (`512KiB`, `1MiB`, `10GiB`,
/// `1TiB`; `K`/`M`/`G`/`T` alone mean the same) or `unlimited`. Decimal units (`MB`) are refused
/// rather than guessed at.
pub fn parse_size(text: &str) -> Result<Limit, String> {
    let t = text.trim();
    if is_unlimited(t) {
        return Ok(Limit::UNLIMITED);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let unit = unit.trim();
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => {
            return Err(format!(
                "{text:?} is not a size: write bytes (1048576) or a binary unit (512KiB, 1MiB, 10GiB, 1TiB), or `unlimited`"
            ))
        }
    };
    let n = number(text, digits)?;
    n.checked_mul(1u64 << shift)
        .map(Limit::at)
        .ok_or_else(|| format!("{text:?} is too large a size"))
}

/// A count bound: a plain number (`1000000`; `1_000_000` and units are refused) or `unlimited`.
pub fn parse_count(text: &str) -> Result<Limit, String> {
    let t = text.trim();
    if is_unlimited(t) {
        return Ok(Limit::UNLIMITED);
    }
    number(text, t).map(Limit::at)
}

fn is_unlimited(t: &str) -> bool {
    t.eq_ignore_ascii_case("unlimited")
}

fn number(text: &str, digits: &str) -> Result<u64, String> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{text:?} is not a number: write digits, optionally with a unit, or `unlimited`"
        ));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is too large"))?;
    if n == 0 {
        // Zero would refuse every image; "no bound" is spelled out so it is never a mistake.
        return Err(format!(
            "{text:?}: a bound of 0 refuses everything; use `unlimited` to turn the bound off"
        ));
    }
    Ok(n)
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("unlimited"),
            Some(n) => f.write_str(&human_size(n)),
        }
    }
}

/// `n` bytes the way the flags are written: the largest binary unit that divides it exactly
/// (`4MiB`, `1536KiB`), else bytes.
pub fn human_size(n: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n != 0 && n % (1u64 << shift) == 0 {
            return format!("{}{unit}", n >> shift);
        }
    }
    format!("{n} bytes")
}

/// The largest compressed blob whose content can decompress to at most `decompressed` bytes:
/// gzip's and zstd's stored (uncompressible) blocks add 5 bytes per 64 KiB and 3 bytes per
/// 128 KiB, and a few dozen bytes of headers; a blob above this cannot be a layer within the
/// bound, so it is refused before it is downloaded.
pub fn max_compressed_size(decompressed: u64) -> u64 {
    decompressed
        .saturating_add(decompressed / 1024)
        .saturating_add(64 << 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_bytes_binary_units_and_unlimited() {
        let ok = |s: &str| parse_size(s).unwrap().get();
        assert_eq!(ok("1048576"), Some(1 << 20));
        assert_eq!(ok("1048576B"), Some(1 << 20));
        assert_eq!(ok("512KiB"), Some(512 << 10));
        assert_eq!(ok("1MiB"), Some(1 << 20));
        assert_eq!(ok("1 MiB"), Some(1 << 20));
        assert_eq!(ok("4mib"), Some(4 << 20));
        assert_eq!(ok("10GiB"), Some(10 << 30));
        assert_eq!(ok("10G"), Some(10 << 30));
        assert_eq!(ok("1TiB"), Some(1 << 40));
        assert_eq!(ok("unlimited"), None);
        assert_eq!(ok("Unlimited"), None);
        for bad in [
            "",
            "MiB",
            "1MB",
            "1.5GiB",
            "-1",
            "0",
            "0MiB",
            "ten",
            "1 2",
            "99999999999TiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} parsed");
        }
        let e = parse_size("0").unwrap_err();
        assert!(e.contains("unlimited"), "{e}");
        let e = parse_size("1MB").unwrap_err();
        assert!(e.contains("MiB"), "{e}");
    }

    #[test]
    fn counts_are_plain_numbers() {
        assert_eq!(parse_count("10").unwrap(), Limit::at(10));
        assert_eq!(parse_count("unlimited").unwrap(), Limit::UNLIMITED);
        for bad in ["10k", "0", "1_000", ""] {
            assert!(parse_count(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn limits_compare_and_print() {
        assert!(Limit::at(10).exceeded_by(11));
        assert!(!Limit::at(10).exceeded_by(10));
        assert!(!Limit::UNLIMITED.exceeded_by(u64::MAX));
        assert_eq!(Limit::at(4 << 20).to_string(), "4MiB");
        assert_eq!(Limit::at(1536 << 10).to_string(), "1536KiB");
        assert_eq!(Limit::at(1000).to_string(), "1000 bytes");
        assert_eq!(Limit::UNLIMITED.to_string(), "unlimited");
        assert_eq!(Limit::UNLIMITED.or_max(), u64::MAX);
    }

    #[test]
    fn compressed_bound_allows_stored_blocks() {
        // A stored gzip of 1 MiB of random data is 1 MiB plus 5 bytes per 64 KiB plus headers.
        assert!(max_compressed_size(1 << 20) > (1 << 20) + 16 * 5 + 32);
        assert_eq!(max_compressed_size(u64::MAX), u64::MAX);
    }
}
