//! A smart-HTTP git server for tests: `git http-backend` (the git CLI's own server side) behind a
//! small Python HTTP server, so context tests and the cluster end-to-end tests fetch from a real
//! git server instead of a simulation. Plain files under `<base>/files` are served too (tarball
//! contexts).

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::cmd::{free_port, wait_for_addr, KillOnDrop};

/// Serves `<base>/files` as static files and `<base>/git` through `git http-backend` under
/// `/git/`, requiring basic auth `user:password` on `/git/` when `auth` is given. Handles chunked
/// request bodies (gitoxide streams large POSTs) and `Git-Protocol` (protocol v2). Speaks TLS with
/// `TLS_CERT`/`TLS_KEY` when set.
const HTTP_SERVER: &str = r#"
import base64, http.server, os, subprocess, sys
root, port, bind, auth = sys.argv[1], int(sys.argv[2]), sys.argv[3], os.environ.get("REQUIRE_AUTH")
class H(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def __init__(self, *a, **k):
        super().__init__(*a, directory=os.path.join(root, "files"), **k)
    def log_message(self, *a):
        pass
    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""
    def git(self):
        data = self.body()
        if auth and self.headers.get("Authorization") != "Basic " + base64.b64encode(auth.encode()).decode():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path[len("/git"):].partition("?")
        env = dict(os.environ, GIT_PROJECT_ROOT=os.path.join(root, "git"), GIT_HTTP_EXPORT_ALL="1",
                   PATH_INFO=path, QUERY_STRING=query, REQUEST_METHOD=self.command,
                   CONTENT_TYPE=self.headers.get("Content-Type", ""), CONTENT_LENGTH=str(len(data)),
                   GIT_PROTOCOL=self.headers.get("Git-Protocol", ""), REMOTE_ADDR=self.client_address[0],
                   HTTP_CONTENT_ENCODING=self.headers.get("Content-Encoding", ""))
        out = subprocess.run(["git", "http-backend"], input=data, env=env, capture_output=True).stdout
        sep = b"\r\n\r\n" if b"\r\n\r\n" in out else b"\n\n"
        head, _, rest = out.partition(sep)
        status, headers = 200, []
        for line in head.decode().splitlines():
            k, _, v = line.partition(":")
            if k.lower() == "status":
                status = int(v.strip().split()[0])
            elif k:
                headers.append((k, v.strip()))
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(rest)))
        self.end_headers()
        self.wfile.write(rest)
    def do_GET(self):
        if self.path.startswith("/git/"):
            return self.git()
        return super().do_GET()
    def do_POST(self):
        if self.path.startswith("/git/"):
            return self.git()
        self.send_error(405)
server = http.server.ThreadingHTTPServer((bind, port), H)
if os.environ.get("TLS_CERT"):
    import ssl
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(os.environ["TLS_CERT"], os.environ["TLS_KEY"])
    server.socket = tls.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;

/// A running server, killed when dropped.
pub struct GitHttpServer {
    _child: KillOnDrop,
    /// The port it listens on.
    pub port: u16,
}

impl GitHttpServer {
    /// Starts the server for `base` on `bind` (an address of this machine: loopback, or one of a
    /// network namespace the test made) and waits until it answers. Needs `python3` and `git`.
    pub fn start(
        base: &Path,
        bind: &str,
        auth: Option<&str>,
        tls: Option<(&Path, &Path)>,
    ) -> GitHttpServer {
        fs::create_dir_all(base.join("files")).expect("create the server's files directory");
        fs::create_dir_all(base.join("git")).expect("create the server's git directory");
        let port = free_port();
        let mut cmd = Command::new("python3");
        cmd.arg("-c")
            .arg(HTTP_SERVER)
            .arg(base)
            .arg(port.to_string())
            .arg(bind)
            .stdout(Stdio::null());
        if let Some(a) = auth {
            cmd.env("REQUIRE_AUTH", a);
        }
        if let Some((cert, key)) = tls {
            cmd.env("TLS_CERT", cert).env("TLS_KEY", key);
        }
        let mut child = cmd.spawn().expect("start python3 http server");
        wait_for_addr(bind, port, &mut child);
        GitHttpServer {
            _child: KillOnDrop(child),
            port,
        }
    }
}
