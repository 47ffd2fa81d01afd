//! Harness for udm-server's tests: the real binary against the cluster `make test` starts
//! (UDM_TEST_HOST / UDM_TEST_PORT / UDM_TEST_DB, as the driver tests), a minimal HTTP/1.1 client
//! over a TCP socket, and tokens.
#![allow(dead_code)]

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
pub use udm_tests::*;

/// At least 32 bytes, as the server requires.
pub const SECRET: &str = "udm-server-test-secret-0123456789abcdef";

pub struct Server {
    child: Child,
    pub addr: String,
    pub log: std::path::PathBuf,
}

impl Server {
    /// Starts `udm-server` as database role `role`, with `env` (`UDM_SERVER_<KEY>`) over the
    /// test defaults, and waits until it listens.
    pub fn start(role: &str, env: &[(&str, &str)]) -> Server {
        let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{}.log", unique("udm-server-")));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_udm-server"));
        for (k, _) in std::env::vars() {
            if k.starts_with("UDM_SERVER_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("UDM_SERVER_DATABASE_URL", conn_string(role))
            .env("UDM_SERVER_LISTEN", "127.0.0.1:0")
            .env("UDM_SERVER_JWT_SECRET", SECRET)
            .env("UDM_SERVER_POOL_SIZE", "4")
            .env("UDM_SERVER_LOG_FORMAT", "text");
        for (k, v) in env {
            cmd.env(format!("UDM_SERVER_{}", k.to_ascii_uppercase()), v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start udm-server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(addr) = line.trim().strip_prefix("udm-server listening on http://") else {
            let _ = child.wait();
            panic!(
                "udm-server did not start: {line:?}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        Server {
            addr: addr.to_string(),
            child,
            log,
        }
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        request(&self.addr, method, path, headers, body)
    }

    /// POST /graphql with a JSON body, a token (if any) and an Accept header (if any).
    pub fn post(&self, token: Option<&str>, accept: Option<&str>, body: &Value) -> Resp {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut h = vec![("Content-Type", "application/json")];
        if let Some(a) = &auth {
            h.push(("Authorization", a));
        }
        if let Some(a) = accept {
            h.push(("Accept", a));
        }
        self.request("POST", "/graphql", &h, Some(body.to_string().as_bytes()))
    }

    /// A GraphQL request as `token` (POST, application/graphql-response+json).
    pub fn gql(&self, token: &str, query: &str, variables: Value) -> Resp {
        self.post(
            Some(token),
            Some("application/graphql-response+json"),
            &json!({"query": query, "variables": variables}),
        )
    }

    /// SIGTERM; the exit status, if the process ends within `wait`.
    pub fn terminate(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM");
        let start = std::time::Instant::now();
        while start.elapsed() < wait {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or("")
    }
}

/// One HTTP/1.1 request on its own connection (`Connection: close`).
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    // the server may answer (413) before reading all of a body
    let _ = s.write_all(&bytes);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut rest = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            let end = i + rest[i..].windows(2).position(|w| w == b"\r\n").unwrap();
            let n = usize::from_str_radix(std::str::from_utf8(&rest[i..end]).unwrap().trim(), 16)
                .unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[end + 2..end + 2 + n]);
            i = end + 2 + n + 2;
        }
        rest = out;
    }
    Resp {
        status,
        headers,
        body: String::from_utf8(rest).unwrap(),
    }
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An HS256 token with these claims.
pub fn token_with(claims: Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A valid token for `user` in `tenant` (five minutes).
pub fn token(tenant: &str, user: &str) -> String {
    token_with(
        json!({"tenant": tenant, "sub": user, "exp": now() + 300}),
        SECRET,
    )
}
