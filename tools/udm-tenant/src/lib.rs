//! udm-tenant moves a udm tenant between databases: `export` writes one tenant of a database as a
//! portable archive, `import` makes it a tenant of another database (or of the same one, under a
//! new slug), `check` verifies an archive without a database.
//!
//! The database produces and consumes the archive (`udm_export`, `udm_import_begin`,
//! `udm_import_finish`): this tool only moves bytes between the server's COPY streams and the
//! archive, in bounded memory, and guards them with checksums. It never runs SQL it read from an
//! archive: the statements it runs come from the server, which planned them from a manifest it
//! checked.
//!
//! # Archive format (container version 1)
//!
//! ```text
//! udm-tenant-archive 1\n
//! manifest <bytes> <sha256>\n<the manifest: JSON, as udm_export wrote it>\n
//! section <index> <name>\n                   one per section of the manifest, in its order:
//! chunk <bytes>\n<bytes of COPY text data>   ... as many as it takes (each at most 16 MiB)
//! end <index> <bytes> <rows> <sha256>\n      the section's length, rows (lines) and digest
//! archive-end <sections> <sha256>\n          the digest of the manifest's and sections' digests
//! ```
//!
//! A section's data is exactly what `COPY ... TO STDOUT` wrote (text format): one line per row,
//! newlines inside values escaped. Any damage (a changed byte, a missing chunk or section, a
//! truncated file) fails a digest, a length or a row count, and the import stops before its
//! transaction can commit: nothing of the tenant is kept.

use postgres::{Client, NoTls};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::{BufRead, Read, Write};

pub const MAGIC: &str = "udm-tenant-archive";
pub const CONTAINER_VERSION: u32 = 1;
/// Section data is written in chunks of this size (the last one smaller).
const CHUNK: usize = 64 * 1024;
/// The largest chunk a reader accepts (it streams it through a `CHUNK` buffer all the same).
const MAX_CHUNK: u64 = 16 * 1024 * 1024;
/// The largest manifest a reader accepts: a manifest grows with a tenant's definitions, never
/// with its records.
const MAX_MANIFEST: u64 = 256 * 1024 * 1024;
const MAX_LINE: u64 = 4096;

/// What went wrong, in words for the operator.
#[derive(Debug)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error(format!("i/o: {e}"))
    }
}

impl From<postgres::Error> for Error {
    fn from(e: postgres::Error) -> Self {
        match e.as_db_error() {
            Some(d) => {
                let mut s = format!("{} (SQLSTATE {})", d.message(), d.code().code());
                if let Some(x) = d.detail() {
                    s.push_str(&format!("\n  detail: {x}"));
                }
                if let Some(x) = d.hint() {
                    s.push_str(&format!("\n  hint: {x}"));
                }
                if let Some(x) = d.where_() {
                    s.push_str(&format!("\n  where: {x}"));
                }
                Error(s)
            }
            None => Error(e.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Whether export and import say on stderr how each section went (`udm-tenant -v`).
pub static VERBOSE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn progress(what: impl FnOnce() -> String) {
    if VERBOSE.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("udm-tenant: {}", what());
    }
}

fn damaged(what: impl fmt::Display) -> Error {
    Error(format!(
        "the archive is damaged or truncated: {what} (nothing was imported; export the tenant again)"
    ))
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

// ------------------------------------------------------------------ writing

/// Writes an archive to `out`.
pub struct Writer<W: Write> {
    out: W,
    digests: Sha256,
    sections: usize,
}

impl<W: Write> Writer<W> {
    /// Starts an archive with its manifest (the JSON text `udm_export` returned).
    pub fn new(mut out: W, manifest: &str) -> Result<Self> {
        let digest = Sha256::digest(manifest.as_bytes());
        write!(
            out,
            "{MAGIC} {CONTAINER_VERSION}\nmanifest {} {}\n",
            manifest.len(),
            hex(&digest)
        )?;
        out.write_all(manifest.as_bytes())?;
        out.write_all(b"\n")?;
        let mut digests = Sha256::new();
        digests.update(digest);
        Ok(Writer {
            out,
            digests,
            sections: 0,
        })
    }

    /// Writes the next section: everything `data` reads. Returns (bytes, rows).
    pub fn section(&mut self, name: &str, data: &mut impl Read) -> Result<(u64, u64)> {
        let index = self.sections;
        writeln!(self.out, "section {index} {name}")?;
        let mut buf = vec![0u8; CHUNK];
        let (mut total, mut rows) = (0u64, 0u64);
        let mut h = Sha256::new();
        loop {
            // fill the buffer (a COPY stream hands over one row at a time)
            let mut n = 0;
            while n < buf.len() {
                let got = data.read(&mut buf[n..])?;
                if got == 0 {
                    break;
                }
                n += got;
            }
            if n == 0 {
                break;
            }
            let piece = &buf[..n];
            writeln!(self.out, "chunk {n}")?;
            self.out.write_all(piece)?;
            h.update(piece);
            total += n as u64;
            rows += piece.iter().filter(|b| **b == b'\n').count() as u64;
            if n < buf.len() {
                break;
            }
        }
        let digest = h.finalize();
        writeln!(self.out, "end {index} {total} {rows} {}", hex(&digest))?;
        self.digests.update(digest);
        self.sections += 1;
        Ok((total, rows))
    }

    /// Ends the archive.
    pub fn finish(mut self) -> Result<W> {
        let d = self.digests.finalize();
        writeln!(self.out, "archive-end {} {}", self.sections, hex(&d))?;
        self.out.flush()?;
        Ok(self.out)
    }
}

// ------------------------------------------------------------------ reading

/// Reads an archive from `input`, checking everything as it streams.
pub struct Reader<R: BufRead> {
    input: R,
    digests: Sha256,
    sections: usize,
    /// The manifest's JSON text, exactly as written.
    pub manifest: String,
}

fn read_line<R: BufRead>(input: &mut R, what: &str) -> Result<String> {
    let mut buf = Vec::new();
    input.by_ref().take(MAX_LINE).read_until(b'\n', &mut buf)?;
    if buf.last() != Some(&b'\n') {
        return Err(damaged(format!(
            "it ends (or breaks) where {what} should be"
        )));
    }
    buf.pop();
    String::from_utf8(buf).map_err(|_| damaged(format!("{what} is not text")))
}

fn words<'a>(line: &'a str, first: &str, n: usize, what: &str) -> Result<Vec<&'a str>> {
    let w: Vec<&str> = line.split(' ').collect();
    if w.len() != n || w[0] != first {
        return Err(damaged(format!(
            "expected {what}, found \"{}\"",
            line.chars().take(80).collect::<String>()
        )));
    }
    Ok(w)
}

fn number(s: &str, what: &str) -> Result<u64> {
    s.parse()
        .map_err(|_| damaged(format!("{what} \"{s}\" is not a number")))
}

impl<R: BufRead> Reader<R> {
    /// Reads the header and the manifest (its digest checked).
    pub fn open(mut input: R) -> Result<Self> {
        let head = read_line(&mut input, "the archive's first line").map_err(|_| {
            Error(
                "this is not a udm tenant archive (it does not start with \"udm-tenant-archive\")"
                    .into(),
            )
        })?;
        let w: Vec<&str> = head.split(' ').collect();
        if w.len() != 2 || w[0] != MAGIC {
            return Err(Error(
                "this is not a udm tenant archive (it does not start with \"udm-tenant-archive\")"
                    .into(),
            ));
        }
        let v = number(w[1], "the container version")?;
        if v > CONTAINER_VERSION as u64 {
            return Err(Error(format!(
                "the archive's container version is {v}; this udm-tenant reads versions up to {CONTAINER_VERSION}: use a newer udm-tenant"
            )));
        }
        let line = read_line(&mut input, "the manifest's header")?;
        let w = words(&line, "manifest", 3, "the manifest's header")?;
        let len = number(w[1], "the manifest's length")?;
        if len > MAX_MANIFEST {
            return Err(damaged(format!("a manifest of {len} bytes")));
        }
        let mut text = Vec::with_capacity(len as usize);
        input.by_ref().take(len).read_to_end(&mut text)?;
        if text.len() as u64 != len {
            return Err(damaged("the manifest is cut short"));
        }
        let digest = Sha256::digest(&text);
        if hex(&digest) != w[2] {
            return Err(damaged("the manifest's digest does not match"));
        }
        let mut nl = [0u8; 1];
        input
            .read_exact(&mut nl)
            .map_err(|_| damaged("the manifest is cut short"))?;
        if nl[0] != b'\n' {
            return Err(damaged("the manifest does not end where its header says"));
        }
        let manifest =
            String::from_utf8(text).map_err(|_| damaged("the manifest is not UTF-8 text"))?;
        let mut digests = Sha256::new();
        digests.update(digest);
        Ok(Reader {
            input,
            digests,
            sections: 0,
            manifest,
        })
    }

    /// Streams the next section, which must be `name`, into `sink`, checking its length, row
    /// count and digest. `Ok` only when all of it arrived unchanged: a caller that loads the
    /// section into a database commits nothing before this returns. Returns (bytes, rows).
    pub fn section(&mut self, name: &str, sink: &mut impl Write) -> Result<(u64, u64)> {
        let index = self.sections;
        let line = read_line(&mut self.input, &format!("section {index} ({name})"))?;
        let w = words(&line, "section", 3, &format!("section {index} ({name})"))?;
        if number(w[1], "a section's index")? != index as u64 || w[2] != name {
            return Err(damaged(format!(
                "expected section {index} ({name}), found section {} ({})",
                w[1], w[2]
            )));
        }
        let mut buf = vec![0u8; CHUNK];
        let (mut total, mut rows) = (0u64, 0u64);
        let mut h = Sha256::new();
        loop {
            let line = read_line(&mut self.input, &format!("the data of section {name}"))?;
            if line.starts_with("end ") {
                let w = words(&line, "end", 5, &format!("the end of section {name}"))?;
                let digest = h.finalize();
                if number(w[1], "a section's index")? != index as u64
                    || number(w[2], "a section's length")? != total
                    || number(w[3], "a section's rows")? != rows
                    || w[4] != hex(&digest)
                {
                    return Err(damaged(format!(
                        "section {name} does not match its end line (length, rows or digest)"
                    )));
                }
                self.digests.update(digest);
                self.sections += 1;
                return Ok((total, rows));
            }
            let w = words(&line, "chunk", 2, &format!("a chunk of section {name}"))?;
            let mut left = number(w[1], "a chunk's length")?;
            if left == 0 || left > MAX_CHUNK {
                return Err(damaged(format!(
                    "a chunk of {left} bytes in section {name}"
                )));
            }
            while left > 0 {
                let want = (left as usize).min(buf.len());
                let got = self.input.read(&mut buf[..want])?;
                if got == 0 {
                    return Err(damaged(format!("section {name} is cut short")));
                }
                let piece = &buf[..got];
                h.update(piece);
                rows += piece.iter().filter(|b| **b == b'\n').count() as u64;
                sink.write_all(piece)?;
                total += got as u64;
                left -= got as u64;
            }
        }
    }

    /// Reads the archive's last line: every section was there, in order, unchanged; nothing
    /// follows.
    pub fn finish(mut self) -> Result<()> {
        let line = read_line(&mut self.input, "the archive's last line")?;
        let w = words(&line, "archive-end", 3, "the archive's last line")?;
        let d = self.digests.finalize();
        if number(w[1], "the number of sections")? != self.sections as u64 || w[2] != hex(&d) {
            return Err(damaged("its sections are not the ones it was written with"));
        }
        let mut rest = [0u8; 1];
        if self.input.read(&mut rest)? != 0 {
            return Err(damaged("something follows its last line"));
        }
        Ok(())
    }
}

// ------------------------------------------------------------------ connecting

/// A connection from a libpq-style connection string (`host=... dbname=...`), a URL
/// (`postgresql://...`) or a database name, with PGHOST, PGPORT, PGUSER, PGPASSWORD and
/// PGSSLMODE as defaults. TLS as libpq's `sslmode`: `prefer` (the default) and `require` encrypt
/// without checking the server's certificate, unless PGSSLROOTCERT names the certificate
/// authority to check it (and the host name) against.
pub fn connect(target: &str) -> Result<Client> {
    let mut config: postgres::Config = if target.contains('=') || target.contains("://") {
        target
            .parse()
            .map_err(|e| Error(format!("connection string: {e}")))?
    } else {
        let mut c = postgres::Config::new();
        c.dbname(target);
        c
    };
    let env = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
    if config.get_hosts().is_empty() {
        match env("PGHOST") {
            Some(h) => {
                for h in h.split(',') {
                    config.host(h);
                }
            }
            None => {
                config.host("/var/run/postgresql");
            }
        }
    }
    if config.get_ports().is_empty() {
        if let Some(p) = env("PGPORT").and_then(|p| p.parse().ok()) {
            config.port(p);
        }
    }
    if config.get_user().is_none() {
        if let Some(u) = env("PGUSER").or_else(|| env("USER")) {
            config.user(&u);
        }
    }
    if config.get_password().is_none() {
        if let Some(p) = env("PGPASSWORD") {
            config.password(p);
        }
    }
    if config.get_dbname().is_none() {
        if let Some(d) = env("PGDATABASE") {
            config.dbname(&d);
        }
    }
    if !target.contains("sslmode") {
        match env("PGSSLMODE").as_deref() {
            Some("disable") => {
                config.ssl_mode(postgres::config::SslMode::Disable);
            }
            Some("require") => {
                config.ssl_mode(postgres::config::SslMode::Require);
            }
            _ => {}
        }
    }
    config.application_name("udm-tenant");
    if config.get_ssl_mode() == postgres::config::SslMode::Disable {
        return Ok(config.connect(NoTls)?);
    }
    let mut tls = native_tls::TlsConnector::builder();
    match env("PGSSLROOTCERT") {
        Some(path) => {
            let pem =
                std::fs::read(&path).map_err(|e| Error(format!("PGSSLROOTCERT {path}: {e}")))?;
            let cert = native_tls::Certificate::from_pem(&pem)
                .map_err(|e| Error(format!("PGSSLROOTCERT {path}: {e}")))?;
            tls.add_root_certificate(cert);
        }
        None => {
            tls.danger_accept_invalid_certs(true)
                .danger_accept_invalid_hostnames(true);
        }
    }
    let tls = tls.build().map_err(|e| Error(format!("TLS: {e}")))?;
    Ok(config.connect(postgres_native_tls::MakeTlsConnector::new(tls))?)
}

// ------------------------------------------------------------------ export and import

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    pub tenant: String,
    pub sections: usize,
    pub rows: u64,
    pub bytes: u64,
}

/// Writes tenant `slug` of the database `client` is connected to as an archive to `out`: one
/// REPEATABLE READ, READ ONLY transaction, so every table is read in one snapshot.
pub fn export(client: &mut Client, slug: &str, out: impl Write) -> Result<Exported> {
    let mut tx = client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?;
    let row = tx.query_one(
        "SELECT (e->'manifest')::text, (e->'statements')::text FROM udm_export($1) AS e",
        &[&slug],
    )?;
    // the manifest as the server wrote it (its text goes into the archive unchanged)
    let manifest: String = row.get(0);
    let statements: Vec<serde_json::Value> = serde_json::from_str(&row.get::<_, String>(1))
        .map_err(|e| {
            Error(format!(
                "udm_export returned statements that are not JSON: {e}"
            ))
        })?;
    let mut w = Writer::new(out, &manifest)?;
    let (mut rows, mut bytes) = (0u64, 0u64);
    for st in &statements {
        let (Some(name), Some(expected), Some(copy)) = (
            st["section"].as_str(),
            st["rows"].as_u64(),
            st["copy"].as_str(),
        ) else {
            return Err(Error(format!(
                "udm_export returned a statement without section, rows and copy: {st}"
            )));
        };
        let started = std::time::Instant::now();
        let mut reader = tx.copy_out(copy)?;
        let (b, r) = w.section(name, &mut reader)?;
        progress(|| {
            format!(
                "section {name}: {r} rows, {b} bytes in {:.2} s",
                started.elapsed().as_secs_f64()
            )
        });
        drop(reader);
        if r != expected {
            return Err(Error(format!(
                "section {name}: COPY wrote {r} rows, the manifest counted {expected}"
            )));
        }
        rows += r;
        bytes += b;
    }
    w.finish()?;
    tx.commit()?;
    Ok(Exported {
        tenant: slug.to_string(),
        sections: statements.len(),
        rows,
        bytes,
    })
}

/// Imports the archive `input` into the database `client` is connected to, as tenant
/// `new_slug` (or the archive's own slug), in one transaction. Returns what
/// `udm_import_finish` reported.
pub fn import(
    client: &mut Client,
    input: impl BufRead,
    new_slug: Option<&str>,
) -> Result<serde_json::Value> {
    let mut r = Reader::open(input)?;
    let mut tx = client.transaction()?;
    let began = tx.query(
        "SELECT b->>'tenant', s->>'section', (s->>'rows')::bigint, s->>'copy' \
         FROM udm_import_begin($1::text::jsonb, $2) AS b, \
              jsonb_array_elements(b->'statements') WITH ORDINALITY AS x(s, n) ORDER BY n",
        &[&r.manifest, &new_slug],
    )?;
    let mut tenant = new_slug.map(str::to_string);
    for st in &began {
        tenant = Some(st.get(0));
        let name: String = st.get(1);
        let expected: i64 = st.get(2);
        let copy: String = st.get(3);
        let started = std::time::Instant::now();
        let mut writer = tx.copy_in(copy.as_str())?;
        // an error here drops the writer unfinished: the COPY fails, the transaction rolls back
        let (bytes, rows) = r.section(&name, &mut writer)?;
        if rows != expected as u64 {
            return Err(damaged(format!(
                "section {name} holds {rows} rows, its manifest says {expected}"
            )));
        }
        writer.finish()?;
        progress(|| {
            format!(
                "section {name}: {rows} rows, {bytes} bytes in {:.2} s",
                started.elapsed().as_secs_f64()
            )
        });
    }
    r.finish()?;
    let started = std::time::Instant::now();
    let tenant = tenant.ok_or_else(|| Error("udm_import_begin returned no sections".into()))?;
    let done: String = tx
        .query_one("SELECT udm_import_finish($1)::text", &[&tenant])?
        .get(0);
    let done: serde_json::Value = serde_json::from_str(&done)
        .map_err(|e| Error(format!("udm_import_finish returned what is not JSON: {e}")))?;
    progress(|| {
        format!(
            "udm_import_finish in {:.2} s",
            started.elapsed().as_secs_f64()
        )
    });
    tx.commit()?;
    Ok(done)
}

/// What `check` found in an archive.
#[derive(Debug, Clone)]
pub struct Checked {
    pub manifest: serde_json::Value,
    pub sections: Vec<(String, u64, u64)>,
}

/// Reads a whole archive without a database: its framing, every digest and length, and every
/// section's row count against its manifest.
pub fn check(input: impl BufRead) -> Result<Checked> {
    let mut r = Reader::open(input)?;
    let manifest: serde_json::Value = serde_json::from_str(&r.manifest)
        .map_err(|e| damaged(format!("the manifest is not JSON: {e}")))?;
    let listed = manifest["sections"]
        .as_array()
        .ok_or_else(|| damaged("the manifest lists no sections"))?
        .clone();
    let mut sections = Vec::new();
    for s in &listed {
        let name = s["name"]
            .as_str()
            .ok_or_else(|| damaged("a section of the manifest has no name"))?;
        let (bytes, rows) = r.section(name, &mut std::io::sink())?;
        if Some(rows) != s["rows"].as_u64() {
            return Err(damaged(format!(
                "section {name} holds {rows} rows, its manifest says {}",
                s["rows"]
            )));
        }
        sections.push((name.to_string(), rows, bytes));
    }
    r.finish()?;
    Ok(Checked { manifest, sections })
}
