//! Tests for layers with device nodes where this process may not create them (no `CAP_MKNOD`,
//! as in Kiln's hardened Pods): the nodes are skipped and counted, the rest of the layer applies.

use super::tests::{opts, Layer};
use super::*;
use std::os::unix::fs::FileTypeExt;
use tar::EntryType;

/// A device entry with its numbers (0:0 is the whiteout device, which the kernel lets anyone
/// create, so a real device is needed to see the refusal).
fn device(layer: &mut Layer, name: &str, kind: EntryType, major: u32, minor: u32) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_path(name).unwrap();
    h.set_mode(0o666);
    h.set_device_major(major).unwrap();
    h.set_device_minor(minor).unwrap();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_500_000_000);
    h.set_size(0);
    h.set_cksum();
    layer.append(&h);
}

/// Log output, shared between the subscriber's writers and the test.
#[derive(Clone, Default)]
struct Log(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl io::Write for Log {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Run `f` on a thread of its own without `CAP_MKNOD` in its effective set (capabilities are per
/// thread, so the rest of the test process keeps it).
fn without_mknod<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        crate::run::drop_effective_on_this_thread(crate::run::CAP_MKNOD).unwrap();
        f()
    })
    .join()
    .unwrap()
}

#[test]
fn device_nodes_are_skipped_where_mknod_is_not_permitted() {
    let work = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_path_buf();
    // A lower layer's file where the layer puts a device: replaced by nothing, as containerd
    // leaves it (the entry is removed before the node is made).
    fs::create_dir_all(r.join("dev")).unwrap();
    fs::write(r.join("dev/console"), "lower").unwrap();
    let mut layer = Layer::new();
    layer.dir("dev/").file("etc/hostname", b"kiln\n");
    device(&mut layer, "dev/null", EntryType::Char, 1, 3);
    device(&mut layer, "dev/console", EntryType::Char, 5, 1);
    device(&mut layer, "dev/sda", EntryType::Block, 8, 0);
    layer
        .raw("dev/null2", EntryType::Link, Some("dev/null"), b"", 0o666)
        .raw("run/fifo", EntryType::Fifo, None, b"", 0o600)
        .file("etc/after", b"after the devices\n");
    let blob = layer.write(work.path());

    let log = Log::default();
    let stats = {
        let (r, log) = (r.clone(), log.clone());
        without_mknod(move || {
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::INFO)
                .with_ansi(false)
                .with_writer(move || log.clone())
                .finish();
            tracing::subscriber::with_default(subscriber, || unpack_layer(&blob, &r, &opts()))
        })
    }
    .unwrap();
    assert_eq!(stats.devices_skipped, 4, "{stats:?}");
    // One line for the layer, saying how many and why.
    let text = log.text();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("device node")).collect();
    assert_eq!(lines.len(), 1, "{text}");
    for part in ["INFO", "4 device node(s)", "CAP_MKNOD", "user namespace"] {
        assert!(lines[0].contains(part), "{part} missing: {}", lines[0]);
    }
    for gone in ["dev/null", "dev/console", "dev/sda", "dev/null2"] {
        assert!(
            fs::symlink_metadata(r.join(gone)).is_err(),
            "{gone} should not exist"
        );
    }
    assert_eq!(fs::read(r.join("etc/hostname")).unwrap(), b"kiln\n");
    assert_eq!(
        fs::read(r.join("etc/after")).unwrap(),
        b"after the devices\n"
    );
    assert!(fs::symlink_metadata(r.join("run/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn device_nodes_are_created_where_mknod_is_permitted() {
    let work = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut layer = Layer::new();
    device(&mut layer, "dev/null", EntryType::Char, 1, 3);
    let blob = layer.write(work.path());
    let stats = unpack_layer(&blob, root.path(), &opts()).unwrap();
    assert_eq!(stats.devices_skipped, 0);
    let meta = fs::symlink_metadata(root.path().join("dev/null")).unwrap();
    assert!(meta.file_type().is_char_device());
}
