//! kiln-warmer: fills a cache volume with base images (an OCI layout addressed by digest).
fn main() {
    eprintln!("kiln-warmer: not implemented yet");
    std::process::exit(2);
}
