//! `--ssh ID=KEYFILE[,KEYFILE...]`: private keys served to a step by an ssh agent of Kiln's own,
//! as BuildKit serves them (`sshprovider`'s keyring): the agent lists the keys and signs with
//! them, and refuses everything else (adding, removing, locking), so a step can use the keys and
//! never read them. Keys are read when the flags are, so an unreadable, encrypted or unknown key
//! fails the build before it starts; errors name the file, never its contents.
//!
//! The protocol is draft-miller-ssh-agent: each message a `uint32` length, a type byte and its
//! fields. Read: `REQUEST_IDENTITIES` (11) and `SIGN_REQUEST` (13); written:
//! `IDENTITIES_ANSWER` (12), `SIGN_RESPONSE` (14), `FAILURE` (5).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use ssh_key::private::KeypairData;
use ssh_key::PrivateKey;

/// BuildKit reads at most this much of a key file.
const MAX_KEY_FILE: u64 = 100 * 1024;
/// The largest request the agent reads (OpenSSH's agent allows 256 KiB).
const MAX_MESSAGE: usize = 256 * 1024;

const FAILURE: u8 = 5;
const REQUEST_IDENTITIES: u8 = 11;
const IDENTITIES_ANSWER: u8 = 12;
const SIGN_REQUEST: u8 = 13;
const SIGN_RESPONSE: u8 = 14;
const RSA_SHA2_256: u32 = 2;
const RSA_SHA2_512: u32 = 4;

/// The keys of one `--ssh` id.
pub struct Keyring {
    keys: Vec<Key>,
}

struct Key {
    private: PrivateKey,
    /// The public key in wire form, as listed and as sign requests name it.
    blob: Vec<u8>,
    comment: String,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({} key(s))", self.keys.len())
    }
}

impl Keyring {
    pub fn new(keys: Vec<PrivateKey>) -> Result<Keyring, String> {
        let keys = keys
            .into_iter()
            .map(|private| {
                let blob = private
                    .public_key()
                    .to_bytes()
                    .map_err(|e| format!("encoding a public key: {e}"))?;
                let comment = private.comment().to_string();
                Ok(Key {
                    private,
                    blob,
                    comment,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Keyring { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Answer one request (its type byte and fields).
    fn handle(&self, msg: &[u8]) -> Vec<u8> {
        match msg.first() {
            Some(&REQUEST_IDENTITIES) => {
                let mut out = vec![IDENTITIES_ANSWER];
                put_u32(&mut out, self.keys.len() as u32);
                for key in &self.keys {
                    put_string(&mut out, &key.blob);
                    put_string(&mut out, key.comment.as_bytes());
                }
                out
            }
            Some(&SIGN_REQUEST) => match self.sign_request(&msg[1..]) {
                Ok(signature) => {
                    let mut out = vec![SIGN_RESPONSE];
                    put_string(&mut out, &signature);
                    out
                }
                Err(e) => {
                    tracing::debug!("ssh agent: sign request refused: {e}");
                    vec![FAILURE]
                }
            },
            // Adding, removing, locking, extensions: a read-only agent refuses them.
            _ => vec![FAILURE],
        }
    }

    fn sign_request(&self, mut fields: &[u8]) -> Result<Vec<u8>, String> {
        let blob = take_string(&mut fields)?;
        let data = take_string(&mut fields)?;
        let flags = take_u32(&mut fields)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.blob == blob)
            .ok_or("no such key")?;
        sign(&key.private, data, flags)
    }
}

/// Read a private key file: OpenSSH's format (any key type that signs here: Ed25519, RSA,
/// ECDSA P-256/P-384) or an RSA key in PEM (PKCS#1 or PKCS#8). Encrypted keys are refused: the
/// executor cannot ask for a passphrase.
pub fn load_key(path: &Path) -> Result<PrivateKey, String> {
    let shown = path.display();
    let mut data = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_KEY_FILE + 1).read_to_end(&mut data))
        .map_err(|e| format!("{shown}: {e}"))?;
    if data.len() as u64 > MAX_KEY_FILE {
        return Err(format!(
            "{shown} is larger than {MAX_KEY_FILE} bytes: not a private key"
        ));
    }
    let text = std::str::from_utf8(&data)
        .map_err(|_| format!("{shown} is not a private key (not PEM text)"))?;
    let encrypted = || {
        format!(
            "{shown} is encrypted with a passphrase, which kiln-executor cannot ask for: give an \
             agent socket holding it (ssh-add) or an unencrypted key"
        )
    };
    let key = if text.contains("-----BEGIN OPENSSH PRIVATE KEY-----") {
        let key = PrivateKey::from_openssh(text)
            .map_err(|e| format!("{shown}: not a valid OpenSSH private key: {e}"))?;
        if key.is_encrypted() {
            return Err(encrypted());
        }
        key
    } else if text.contains("ENCRYPTED") {
        return Err(encrypted());
    } else if text.contains("-----BEGIN RSA PRIVATE KEY-----")
        || text.contains("-----BEGIN PRIVATE KEY-----")
    {
        use rsa::pkcs1::DecodeRsaPrivateKey;
        use rsa::pkcs8::DecodePrivateKey;
        let rsa = rsa::RsaPrivateKey::from_pkcs1_pem(text)
            .or_else(|_| rsa::RsaPrivateKey::from_pkcs8_pem(text))
            .map_err(|_| {
                format!(
                    "{shown}: a PEM key kiln-executor cannot read (RSA keys only in PEM; rewrite \
                     others in OpenSSH's format with ssh-keygen -p -f)"
                )
            })?;
        let pair = ssh_key::private::RsaKeypair::try_from(rsa)
            .map_err(|e| format!("{shown}: unusable RSA key: {e}"))?;
        PrivateKey::from(pair)
    } else if text.contains("-----BEGIN EC PRIVATE KEY-----") {
        return Err(format!(
            "{shown}: an EC key in PEM, which kiln-executor does not read: rewrite it in \
             OpenSSH's format with ssh-keygen -p -f"
        ));
    } else {
        return Err(format!("{shown} is not a private key"));
    };
    match key.key_data() {
        KeypairData::Ed25519(_) | KeypairData::Rsa(_) | KeypairData::Ecdsa(_) => Ok(key),
        _ => Err(format!(
            "{shown}: a {} key, which kiln-executor's agent cannot sign with (Ed25519, RSA and \
             ECDSA keys can)",
            key.algorithm()
        )),
    }
}

/// The signature of `data` in wire form (`string algorithm, string blob`); RSA as the flags ask
/// (SHA-256 or SHA-512; the SHA-1 `ssh-rsa` signature is not made).
fn sign(key: &PrivateKey, data: &[u8], flags: u32) -> Result<Vec<u8>, String> {
    let (name, blob) = match key.key_data() {
        KeypairData::Rsa(pair) => {
            use rsa::signature::{SignatureEncoding, Signer};
            let private = rsa_private(pair)?;
            if flags & RSA_SHA2_512 != 0 {
                let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha512>::new(private);
                ("rsa-sha2-512".to_string(), signer.sign(data).to_vec())
            } else if flags & RSA_SHA2_256 != 0 {
                let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(private);
                ("rsa-sha2-256".to_string(), signer.sign(data).to_vec())
            } else {
                return Err("an ssh-rsa (SHA-1) signature was asked for".into());
            }
        }
        _ => {
            let signature: ssh_key::Signature =
                rsa::signature::Signer::try_sign(key, data).map_err(|e| e.to_string())?;
            (
                signature.algorithm().to_string(),
                signature.as_bytes().to_vec(),
            )
        }
    };
    let mut out = Vec::new();
    put_string(&mut out, name.as_bytes());
    put_string(&mut out, &blob);
    Ok(out)
}

/// The RSA key of `pair`, from its components.
fn rsa_private(pair: &ssh_key::private::RsaKeypair) -> Result<rsa::RsaPrivateKey, String> {
    let int = |m: &ssh_key::Mpint| {
        m.as_positive_bytes()
            .map(rsa::BigUint::from_bytes_be)
            .ok_or("a negative RSA component")
    };
    let key = rsa::RsaPrivateKey::from_components(
        int(&pair.public.n)?,
        int(&pair.public.e)?,
        int(&pair.private.d)?,
        vec![int(&pair.private.p)?, int(&pair.private.q)?],
    )
    .map_err(|e| format!("an unusable RSA key: {e}"))?;
    Ok(key)
}

/// Serve one connection until the step closes it.
pub(super) fn serve(mut conn: UnixStream, ring: &Keyring) -> io::Result<()> {
    conn.set_nonblocking(false)?;
    loop {
        let mut len = [0u8; 4];
        match conn.read_exact(&mut len) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            other => other?,
        }
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > MAX_MESSAGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("an agent request of {len} bytes"),
            ));
        }
        let mut msg = vec![0; len];
        conn.read_exact(&mut msg)?;
        let reply = ring.handle(&msg);
        let mut framed = Vec::with_capacity(reply.len() + 4);
        put_u32(&mut framed, reply.len() as u32);
        framed.extend_from_slice(&reply);
        conn.write_all(&framed)?;
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s);
}

fn take_u32(buf: &mut &[u8]) -> Result<u32, String> {
    if buf.len() < 4 {
        return Err("a truncated request".into());
    }
    let (head, rest) = buf.split_at(4);
    *buf = rest;
    Ok(u32::from_be_bytes(head.try_into().unwrap()))
}

fn take_string<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], String> {
    let len = take_u32(buf)? as usize;
    if buf.len() < len {
        return Err("a truncated request".into());
    }
    let (s, rest) = buf.split_at(len);
    *buf = rest;
    Ok(s)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::process::Command;

    /// A private key made by OpenSSH's ssh-keygen in `dir` (its `.pub` beside it).
    pub(in crate::run_mounts) fn keygen(
        dir: &Path,
        name: &str,
        kind: &[&str],
        passphrase: &str,
    ) -> std::path::PathBuf {
        let path = dir.join(name);
        let out = Command::new("ssh-keygen")
            .args(kind)
            .args(["-q", "-N", passphrase, "-C", name, "-f"])
            .arg(&path)
            .output()
            .expect("ssh-keygen (openssh-client) runs");
        assert!(out.status.success(), "{out:?}");
        path
    }

    /// The agent, checked by OpenSSH's own clients: `ssh-add -l` lists every key with the
    /// fingerprint `ssh-keygen -l` gives its file, and `ssh-keygen -Y sign` signs through the
    /// agent (given only the public key) with signatures `ssh-keygen -Y verify` accepts.
    #[test]
    fn openssh_clients_list_and_sign_through_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let kinds: [(&str, &[&str]); 5] = [
            ("ed", &["-t", "ed25519"]),
            ("rsa", &["-t", "rsa", "-b", "2048"]),
            ("p256", &["-t", "ecdsa", "-b", "256"]),
            ("p384", &["-t", "ecdsa", "-b", "384"]),
            ("pem", &["-t", "rsa", "-b", "2048", "-m", "PEM"]),
        ];
        let mut keys = Vec::new();
        let mut paths = Vec::new();
        for (name, kind) in kinds {
            let path = keygen(dir.path(), name, kind, "");
            keys.push(load_key(&path).unwrap_or_else(|e| panic!("{name}: {e}")));
            paths.push(path);
        }
        let ring = std::sync::Arc::new(Keyring::new(keys).unwrap());
        let sock = dir.path().join("agent.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let served = std::sync::Arc::clone(&ring);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let ring = std::sync::Arc::clone(&served);
                let conn = conn.unwrap();
                std::thread::spawn(move || serve(conn, &ring));
            }
        });
        let listed = Command::new("ssh-add")
            .arg("-l")
            .env("SSH_AUTH_SOCK", &sock)
            .output()
            .unwrap();
        assert!(listed.status.success(), "{listed:?}");
        let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
        assert_eq!(listed.lines().count(), 5, "{listed}");
        let message = dir.path().join("message");
        std::fs::write(&message, "signed through kiln's agent\n").unwrap();
        for path in &paths {
            let fingerprint = Command::new("ssh-keygen")
                .arg("-lf")
                .arg(path)
                .output()
                .unwrap();
            let fingerprint = String::from_utf8_lossy(&fingerprint.stdout).into_owned();
            let fp = fingerprint.split_whitespace().nth(1).unwrap();
            assert!(listed.contains(fp), "{fp} not in {listed}");
            // Sign with the public key only: ssh-keygen asks the agent.
            let public = path.with_extension("pub");
            if !public.exists() {
                std::fs::copy(format!("{}.pub", path.display()), &public).unwrap();
            }
            std::fs::remove_file(path).unwrap();
            let signed = Command::new("ssh-keygen")
                .args(["-Y", "sign", "-n", "file", "-f"])
                .arg(&public)
                .arg(&message)
                .env("SSH_AUTH_SOCK", &sock)
                .output()
                .unwrap();
            assert!(signed.status.success(), "{}: {signed:?}", path.display());
            let allowed = dir.path().join("allowed");
            let pubtext = std::fs::read_to_string(&public).unwrap();
            std::fs::write(&allowed, format!("kiln@test {pubtext}")).unwrap();
            let verified = Command::new("ssh-keygen")
                .args(["-Y", "verify", "-n", "file", "-I", "kiln@test", "-f"])
                .arg(&allowed)
                .arg("-s")
                .arg(format!("{}.sig", message.display()))
                .stdin(std::fs::File::open(&message).unwrap())
                .output()
                .unwrap();
            assert!(
                verified.status.success(),
                "{}: {verified:?}",
                path.display()
            );
            std::fs::remove_file(format!("{}.sig", message.display())).unwrap();
        }
        // What a read-only agent refuses: adding a key.
        let extra = keygen(dir.path(), "extra", &["-t", "ed25519"], "");
        let added = Command::new("ssh-add")
            .arg(&extra)
            .env("SSH_AUTH_SOCK", &sock)
            .output()
            .unwrap();
        assert!(!added.status.success(), "{added:?}");
    }

    #[test]
    fn unusable_key_files_fail_naming_the_file_and_not_the_contents() {
        let dir = tempfile::tempdir().unwrap();
        let locked = keygen(dir.path(), "locked", &["-t", "ed25519"], "secret-pass");
        let err = load_key(&locked).unwrap_err();
        assert!(err.contains("encrypted") && err.contains("locked"), "{err}");
        let locked_pem = keygen(
            dir.path(),
            "locked-pem",
            &["-t", "rsa", "-b", "2048", "-m", "PEM"],
            "secret-pass",
        );
        assert!(load_key(&locked_pem).unwrap_err().contains("encrypted"));
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "hello, not a key\n").unwrap();
        let err = load_key(&text).unwrap_err();
        assert!(
            err.contains("is not a private key") && !err.contains("hello"),
            "{err}"
        );
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; MAX_KEY_FILE as usize + 1]).unwrap();
        assert!(load_key(&big).unwrap_err().contains("larger than"));
        let err = load_key(&dir.path().join("missing")).unwrap_err();
        assert!(err.contains("missing"), "{err}");
    }

    #[test]
    fn malformed_requests_get_a_failure() {
        let ring = Keyring::new(Vec::new()).unwrap();
        assert_eq!(ring.handle(&[SIGN_REQUEST, 0, 0, 0, 9, 1]), vec![FAILURE]);
        assert_eq!(ring.handle(&[17]), vec![FAILURE]);
        assert_eq!(
            ring.handle(&[REQUEST_IDENTITIES]),
            vec![IDENTITIES_ANSWER, 0, 0, 0, 0]
        );
    }
}
