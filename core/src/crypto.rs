//! Field encryption: the master key file's format, per-tenant data keys wrapped by the master
//! key, the envelope an encrypted value is stored in, and keyed blind indexes for equality.
//!
//! * Values are sealed with AES-256-GCM (RustCrypto `aes-gcm`) under a tenant's data key, with a
//!   fresh random 96-bit nonce per value (`getrandom`). The associated data binds the record id,
//!   the field id, the data key's id and the blind index, so a ciphertext copied to another
//!   record or field, or a blind index edited next to it, does not decrypt.
//! * Data keys (random, 256 bits) are stored wrapped: sealed with AES-256-GCM under the master
//!   key, their purpose and id bound in as associated data. The master key never lives in the
//!   database; its fingerprint (a SHA-256 of a label and the key, cut to 8 bytes) names it.
//! * A blind index is HMAC-SHA256 under the tenant's index key of the field id and the
//!   plaintext, cut to 128 bits: equal plaintexts of one field have equal indexes (that is what
//!   it leaks), and nobody without the index key can compute one for a guess.
//!
//! Stored form of a value (text): `udm1:<key id>:<blind index hex or empty>:<base64(nonce ||
//! ciphertext || tag)>`. Base64 has no `:`, so `split_part(value, ':', 3)` is the blind index.

use crate::error::{Result, SqlState, UdmError};
use crate::ids::{hex, unhex};
use aes_gcm::aead::{Aead, AeadInPlace, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Bytes of HMAC-SHA256 kept in a blind index.
const BLIND_LEN: usize = 16;
/// The prefix of every stored encrypted value.
pub const PREFIX: &str = "udm1:";
/// Largest plaintext udm encrypts (the largest text value PostgreSQL stores is 1 GB; this keeps
/// the base64 form of a sealed value under it).
pub const MAX_PLAINTEXT: usize = 700 * 1024 * 1024;

/// A 256-bit key, wiped from memory when dropped. Its `Debug` never shows the bytes.
#[derive(Clone)]
pub struct Key(Zeroizing<[u8; KEY_LEN]>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    pub fn from_bytes(b: [u8; KEY_LEN]) -> Key {
        Key(Zeroizing::new(b))
    }

    /// A fresh random key from the operating system's generator.
    pub fn random() -> Result<Key> {
        let mut b = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::getrandom(b.as_mut()).map_err(rng_error)?;
        Ok(Key(b))
    }

    /// The key's public name: 16 hex digits of SHA-256("udm master key" || key). It says which
    /// master key wrapped a data key without revealing anything usable about it.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"udm master key\0");
        h.update(self.0.as_ref());
        hex(&h.finalize()[..8])
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(self.0.as_ref()).expect("32-byte key")
    }

    /// The key made ready to seal and open values (its AES key schedule computed once).
    pub fn sealer(&self) -> Sealer {
        Sealer(self.cipher())
    }
}

/// A data key ready for `seal_with` / `open_with` (wiped when dropped, as `aes-gcm` does with its
/// `zeroize` feature).
pub struct Sealer(Aes256Gcm);

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

fn rng_error(e: getrandom::Error) -> UdmError {
    UdmError::new(
        SqlState::ObjectNotInPrerequisiteState,
        format!("the operating system's random number generator failed: {e}"),
    )
}

/// Reads a master key file's content: 64 hexadecimal digits or the base64 of 32 bytes
/// (surrounding whitespace ignored), or exactly 32 raw bytes. The error never quotes the content.
pub fn parse_master_key(content: &[u8]) -> Result<Key> {
    let bad = || {
        UdmError::new(
            SqlState::InvalidParameterValue,
            "the master key file does not hold a 256-bit key",
        )
        .hint("write 64 hexadecimal digits, e.g. `openssl rand -hex 32 > udm-master.key`")
    };
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    if content.len() == KEY_LEN && std::str::from_utf8(content).is_err() {
        out.copy_from_slice(content);
        return Ok(Key(out));
    }
    let text = std::str::from_utf8(content).map_err(|_| bad())?.trim();
    if text.len() == 2 * KEY_LEN {
        let mut b = Zeroizing::new(unhex(text).ok_or_else(bad)?);
        out.copy_from_slice(&b);
        b.zeroize();
        return Ok(Key(out));
    }
    let b = Zeroizing::new(B64.decode(text).map_err(|_| bad())?);
    if b.len() != KEY_LEN {
        return Err(bad());
    }
    out.copy_from_slice(&b);
    Ok(Key(out))
}

/// What a tenant key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Seals values.
    Data,
    /// Keys blind indexes.
    Index,
}

impl Purpose {
    pub fn name(self) -> &'static str {
        match self {
            Purpose::Data => "data",
            Purpose::Index => "index",
        }
    }

    pub fn parse(s: &str) -> Option<Purpose> {
        match s {
            "data" => Some(Purpose::Data),
            "index" => Some(Purpose::Index),
            _ => None,
        }
    }
}

fn wrap_aad(purpose: Purpose, id: i32) -> Vec<u8> {
    let mut a = b"udm key\0".to_vec();
    a.extend_from_slice(purpose.name().as_bytes());
    a.push(0);
    a.extend_from_slice(&id.to_be_bytes());
    a
}

/// Nonces for values: each one 96 fresh bits from the operating system's generator, read 4 KiB
/// at a time (one system call per 341 values instead of one each). The buffer belongs to one
/// process: a forked child never uses what its parent read (it refills when a fork happened since
/// the buffer was read, see `fork_generation`).
struct NonceBuffer {
    forks: u64,
    buf: Zeroizing<Vec<u8>>,
    at: usize,
}

const NONCE_BUFFER: usize = 4092;

/// How many forks this process descends through since udm's nonces were first used in an
/// ancestor: a `pthread_atfork` child handler counts them (registered before any buffer is read,
/// and inherited by every child). Where the handler cannot be registered, the process id stands
/// in (a system call each time).
fn fork_generation() -> u64 {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    static FORKS: AtomicU64 = AtomicU64::new(0);
    static COUNTED: AtomicBool = AtomicBool::new(false);
    static REGISTER: std::sync::Once = std::sync::Once::new();
    extern "C" fn forked() {
        FORKS.fetch_add(1, Ordering::SeqCst);
    }
    REGISTER.call_once(|| {
        // SAFETY: registers a handler that only increments an atomic (async-signal-safe)
        let rc = unsafe { libc::pthread_atfork(None, None, Some(forked)) };
        COUNTED.store(rc == 0, Ordering::SeqCst);
    });
    if COUNTED.load(Ordering::Relaxed) {
        FORKS.load(Ordering::SeqCst)
    } else {
        // a pid is never 0 nor above 2^32: no count of forks equals one shifted up
        u64::from(std::process::id()) << 32
    }
}

impl NonceBuffer {
    fn next(&mut self) -> Result<[u8; NONCE_LEN]> {
        let forks = fork_generation();
        if self.forks != forks || self.at + NONCE_LEN > self.buf.len() {
            self.buf.resize(NONCE_BUFFER, 0);
            getrandom::getrandom(&mut self.buf).map_err(rng_error)?;
            self.forks = forks;
            self.at = 0;
        }
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(&self.buf[self.at..self.at + NONCE_LEN]);
        // a nonce is used once: wipe it from the buffer
        self.buf[self.at..self.at + NONCE_LEN].fill(0);
        self.at += NONCE_LEN;
        Ok(n)
    }
}

thread_local! {
    static NONCES: std::cell::RefCell<NonceBuffer> = std::cell::RefCell::new(NonceBuffer {
        forks: u64::MAX,
        buf: Zeroizing::new(Vec::new()),
        at: 0,
    });
}

fn fresh_nonce() -> Result<[u8; NONCE_LEN]> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::getrandom(&mut n).map_err(rng_error)?;
    Ok(n)
}

/// Seals a tenant key under the master key: nonce || ciphertext || tag.
pub fn wrap_key(master: &Key, key: &Key, purpose: Purpose, id: i32) -> Result<Vec<u8>> {
    let nonce = fresh_nonce()?;
    let aad = wrap_aad(purpose, id);
    let ct = master
        .cipher()
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: key.0.as_ref(),
                aad: &aad,
            },
        )
        .map_err(|_| UdmError::internal("sealing a key failed"))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens a wrapped tenant key; fails when the master key is another one or the bytes changed.
pub fn unwrap_key(master: &Key, wrapped: &[u8], purpose: Purpose, id: i32) -> Result<Key> {
    let bad = || {
        UdmError::new(
            SqlState::DataCorrupted,
            format!(
                "{} key {id} does not open with the loaded master key",
                purpose.name()
            ),
        )
        .hint("the key was wrapped by another master key, or its stored bytes changed")
    };
    if wrapped.len() != NONCE_LEN + KEY_LEN + TAG_LEN {
        return Err(bad());
    }
    let aad = wrap_aad(purpose, id);
    let plain = Zeroizing::new(
        master
            .cipher()
            .decrypt(
                Nonce::from_slice(&wrapped[..NONCE_LEN]),
                Payload {
                    msg: &wrapped[NONCE_LEN..],
                    aad: &aad,
                },
            )
            .map_err(|_| bad())?,
    );
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    out.copy_from_slice(&plain);
    Ok(Key(out))
}

/// The parts of a stored encrypted value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub key_id: i32,
    /// Hex, or empty when the field has no blind index.
    pub blind: &'a str,
    pub body: &'a str,
}

/// The SQL of the blind index stored in an encrypted value (`column_sql`, a text expression):
/// the one expression the unique constraints and indexes of encrypted fields are built on and
/// the equality filters compare with, so that the indexes serve them.
pub fn blind_index_sql(column_sql: &str) -> String {
    format!("split_part({column_sql}, ':', 3)")
}

/// The SQL of the id (text) of the data key that sealed an encrypted value.
pub fn key_id_sql(column_sql: &str) -> String {
    format!("split_part({column_sql}, ':', 2)")
}

/// Whether a stored text has the form of an encrypted value (`udm1:`...).
pub fn looks_sealed(s: &str) -> bool {
    s.starts_with(PREFIX)
}

/// The key id at the start of a stored value after its prefix: 1 to 10 digits up to the first
/// colon, within i32; with the colon's position.
fn key_id_of(b: &[u8]) -> Option<(i32, usize)> {
    let mut key_id: i64 = 0;
    let mut i = 0;
    while i < b.len() && b[i].is_ascii_digit() {
        if i == 10 {
            return None;
        }
        key_id = key_id * 10 + i64::from(b[i] - b'0');
        i += 1;
    }
    if i == 0 || b.get(i) != Some(&b':') {
        return None;
    }
    Some((i32::try_from(key_id).ok()?, i))
}

/// Splits a stored value into its parts; None when it is not of the envelope's form.
pub fn parse_envelope(s: &str) -> Option<Envelope<'_>> {
    let rest = s.strip_prefix(PREFIX)?;
    let b = rest.as_bytes();
    let (key_id, i) = key_id_of(b)?;
    // the blind index: empty or 32 hex digits, up to the second colon (bytes: a colon is never
    // inside a UTF-8 sequence)
    let after = &b[i + 1..];
    let blind_len = match after.first() {
        Some(b':') => 0,
        _ if after.len() > 2 * BLIND_LEN
            && after[2 * BLIND_LEN] == b':'
            && after[..2 * BLIND_LEN].iter().all(u8::is_ascii_hexdigit) =>
        {
            2 * BLIND_LEN
        }
        _ => return None,
    };
    let blind = &rest[i + 1..i + 1 + blind_len];
    let body = &rest[i + 2 + blind_len..];
    if body.as_bytes().contains(&b':') {
        return None;
    }
    Some(Envelope {
        key_id,
        blind,
        body,
    })
}

/// The associated data of a value: `udm1`, record id, field id, key id, blind index (hex).
struct Aad {
    buf: [u8; 28 + 2 * BLIND_LEN],
    len: usize,
}

impl Aad {
    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

fn value_aad(record: &[u8; 16], field: u32, key_id: i32, blind: &[u8]) -> Result<Aad> {
    if blind.len() > 2 * BLIND_LEN {
        return Err(UdmError::internal("a blind index is too long"));
    }
    let mut a = Aad {
        buf: [0; 28 + 2 * BLIND_LEN],
        len: 28 + blind.len(),
    };
    a.buf[..4].copy_from_slice(b"udm1");
    a.buf[4..20].copy_from_slice(record);
    a.buf[20..24].copy_from_slice(&field.to_be_bytes());
    a.buf[24..28].copy_from_slice(&key_id.to_be_bytes());
    a.buf[28..a.len].copy_from_slice(blind);
    Ok(a)
}

/// Seals `plaintext` of field `field` of record `record` under data key `key_id`, with its blind
/// index (hex, from `blind_index`) when the field has one.
/// (For unit tests: udm holds its keys made ready, `Sealer` / `Blinder`.)
#[cfg(test)]
pub fn seal(
    key: &Key,
    key_id: i32,
    blind: Option<&str>,
    record: &[u8; 16],
    field: u32,
    plaintext: &[u8],
) -> Result<String> {
    seal_with(&key.sealer(), key_id, blind, record, field, plaintext)
}

/// `seal` with a data key made ready once.
pub fn seal_with(
    key: &Sealer,
    key_id: i32,
    blind: Option<&str>,
    record: &[u8; 16],
    field: u32,
    plaintext: &[u8],
) -> Result<String> {
    let mut out = String::new();
    seal_into(key, key_id, blind, record, field, plaintext, &mut out)?;
    Ok(out)
}

/// Plaintexts up to this length are sealed in a buffer on the stack.
const SMALL: usize = 512;

/// `seal_with` writing the sealed value into `out` (cleared first): one allocation at most, for
/// `out` itself.
pub fn seal_into(
    key: &Sealer,
    key_id: i32,
    blind: Option<&str>,
    record: &[u8; 16],
    field: u32,
    plaintext: &[u8],
    out: &mut String,
) -> Result<()> {
    use std::fmt::Write;
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(UdmError::new(
            SqlState::ProgramLimitExceeded,
            format!(
                "a value of {} bytes is too long to encrypt (at most {MAX_PLAINTEXT})",
                plaintext.len()
            ),
        ));
    }
    let blind = blind.unwrap_or("");
    let nonce = NONCES.with(|n| n.borrow_mut().next())?;
    let aad = value_aad(record, field, key_id, blind.as_bytes())?;
    // nonce || ciphertext || tag, the plaintext encrypted in place
    let n = NONCE_LEN + plaintext.len() + TAG_LEN;
    let mut small = [0u8; NONCE_LEN + SMALL + TAG_LEN];
    let mut large = Vec::new();
    let raw: &mut [u8] = if plaintext.len() <= SMALL {
        &mut small[..n]
    } else {
        large.resize(n, 0);
        &mut large
    };
    raw[..NONCE_LEN].copy_from_slice(&nonce);
    raw[NONCE_LEN..n - TAG_LEN].copy_from_slice(plaintext);
    let tag = key
        .0
        .encrypt_in_place_detached(
            Nonce::from_slice(&nonce),
            aad.bytes(),
            &mut raw[NONCE_LEN..n - TAG_LEN],
        )
        .map_err(|_| UdmError::internal("sealing a value failed"))?;
    raw[n - TAG_LEN..].copy_from_slice(&tag);
    out.clear();
    out.reserve(PREFIX.len() + 12 + blind.len() + n.div_ceil(3) * 4);
    let _ = write!(out, "{PREFIX}{key_id}:{blind}:");
    B64.encode_string(&*raw, out);
    Ok(())
}

/// Opens a sealed value of field `field` of record `record` (the key is the one `env.key_id`
/// names). Fails, without saying more, when the value was moved from another record or field,
/// or any part of it changed.
/// (For unit tests: udm holds its keys made ready, `Sealer` / `Blinder`.)
#[cfg(test)]
pub fn open(key: &Key, env: &Envelope<'_>, record: &[u8; 16], field: u32) -> Result<Vec<u8>> {
    open_with(&key.sealer(), env, record, field)
}

/// `open` with a data key made ready once.
pub fn open_with(
    key: &Sealer,
    env: &Envelope<'_>,
    record: &[u8; 16],
    field: u32,
) -> Result<Vec<u8>> {
    let mut raw = Vec::new();
    let len = open_in(key, env, record, field, &mut raw)?.len();
    raw.copy_within(NONCE_LEN..NONCE_LEN + len, 0);
    raw.truncate(len);
    Ok(raw)
}

/// `open_with` in the caller's buffer `buf` (its content replaced; kept to open the next value
/// without allocating): the plaintext, a slice of `buf`.
pub fn open_in<'b>(
    key: &Sealer,
    env: &Envelope<'_>,
    record: &[u8; 16],
    field: u32,
    buf: &'b mut Vec<u8>,
) -> Result<&'b [u8]> {
    let at = open_parts(
        key,
        env.key_id,
        env.blind.as_bytes(),
        env.body.as_bytes(),
        record,
        field,
        buf,
    )?;
    Ok(&buf[at])
}

/// The parts of a stored value as `open_in` uses them, found without checking what the
/// decryption checks anyway (see `split_stored`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredParts<'a> {
    pub key_id: i32,
    pub blind: &'a [u8],
    pub body: &'a [u8],
}

/// Finds the key id, blind index and body of a stored value (bytes, as read from the table) for
/// reads that open it: the form of `parse_envelope` except that the blind index's letters and the
/// body's are left to the decryption (the blind index is bound in as associated data, the body
/// must be base64), so a value `parse_envelope` refuses never opens either. None when it is
/// not of that form; a caller then reports through `parse_envelope`.
pub fn split_stored(stored: &[u8]) -> Option<StoredParts<'_>> {
    let b = stored.strip_prefix(PREFIX.as_bytes())?;
    let (key_id, i) = key_id_of(b)?;
    let after = &b[i + 1..];
    let blind_len = match after.first() {
        Some(b':') => 0,
        _ if after.get(2 * BLIND_LEN) == Some(&b':') => 2 * BLIND_LEN,
        _ => return None,
    };
    Some(StoredParts {
        key_id,
        blind: &after[..blind_len],
        body: &after[blind_len + 1..],
    })
}

/// `open_in` with the parts `split_stored` found: where the plaintext is in `buf`.
pub fn open_parts(
    key: &Sealer,
    key_id: i32,
    blind: &[u8],
    body: &[u8],
    record: &[u8; 16],
    field: u32,
    buf: &mut Vec<u8>,
) -> Result<std::ops::Range<usize>> {
    let bad = || {
        UdmError::new(
            SqlState::DataCorrupted,
            "the encrypted value does not decrypt for this record and field",
        )
        .hint("it was copied from another record or field, or changed outside udm")
    };
    // decoded into one buffer and opened in place
    b64_decode_into(body, buf).ok_or_else(bad)?;
    let n = buf.len();
    if n < NONCE_LEN + TAG_LEN {
        return Err(bad());
    }
    let aad = value_aad(record, field, key_id, blind)?;
    let (nonce, rest) = buf.split_at_mut(NONCE_LEN);
    let (body, tag) = rest.split_at_mut(n - NONCE_LEN - TAG_LEN);
    key.0
        .decrypt_in_place_detached(
            Nonce::from_slice(nonce),
            aad.bytes(),
            body,
            Tag::from_slice(tag),
        )
        .map_err(|_| bad())?;
    Ok(NONCE_LEN..n - TAG_LEN)
}

/// The values of base64's 64 letters (standard alphabet), 0xff for any other byte.
const B64_VALUES: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let letters = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut i = 0;
    while i < 64 {
        t[letters[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Decodes padded standard base64 (as `seal` writes it) into `out` (cleared first); None when
/// `text` is not that: a length not a multiple of 4, a byte outside the alphabet, padding
/// elsewhere than at the end, or bits set past the last byte (the forms the `base64` crate
/// refuses too).
fn b64_decode_into(text: &[u8], out: &mut Vec<u8>) -> Option<()> {
    out.clear();
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let pad = text
        .iter()
        .rev()
        .take(2)
        .take_while(|&&c| c == b'=')
        .count();
    let (whole, last) = match text.len() {
        0 => return Some(()),
        n => text.split_at(n - 4),
    };
    out.resize(text.len() / 4 * 3 - pad, 0);
    let (head, tail) = out.split_at_mut(whole.len() / 4 * 3);
    let mut bad = 0u8;
    for (q, o) in whole.chunks_exact(4).zip(head.chunks_exact_mut(3)) {
        let v = [
            B64_VALUES[q[0] as usize],
            B64_VALUES[q[1] as usize],
            B64_VALUES[q[2] as usize],
            B64_VALUES[q[3] as usize],
        ];
        bad |= v[0] | v[1] | v[2] | v[3];
        let w = (u32::from(v[0]) << 18)
            | (u32::from(v[1]) << 12)
            | (u32::from(v[2]) << 6)
            | u32::from(v[3]);
        o.copy_from_slice(&w.to_be_bytes()[1..]);
    }
    let mut w = 0u32;
    for (i, &c) in last.iter().enumerate() {
        let v = if i >= 4 - pad {
            0
        } else {
            B64_VALUES[c as usize]
        };
        bad |= v;
        w |= u32::from(v & 0x3f) << (18 - 6 * i);
    }
    if bad & 0xc0 != 0 {
        out.clear();
        return None;
    }
    let bytes = w.to_be_bytes();
    // the bits of a padded group past its last byte are zero in canonical base64
    if bytes[4 - pad..].iter().any(|&b| b != 0) {
        out.clear();
        return None;
    }
    tail.copy_from_slice(&bytes[1..4 - pad]);
    Some(())
}

/// The blind index of `plaintext` in field `field`: hex of HMAC-SHA256(index key, field id ||
/// plaintext), cut to 128 bits.
/// (For unit tests: udm holds its keys made ready, `Sealer` / `Blinder`.)
#[cfg(test)]
pub fn blind_index(index_key: &Key, field: u32, plaintext: &[u8]) -> String {
    index_key.blinder().blind(field, plaintext)
}

/// An index key made ready for blind indexes (HMAC's inner and outer keys computed once).
#[derive(Clone)]
pub struct Blinder(Hmac<Sha256>);

impl std::fmt::Debug for Blinder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Blinder(..)")
    }
}

impl Key {
    pub fn blinder(&self) -> Blinder {
        Blinder(<Hmac<Sha256> as Mac>::new_from_slice(self.0.as_ref()).expect("any length"))
    }
}

impl Blinder {
    /// `blind_index` with this index key.
    pub fn blind(&self, field: u32, plaintext: &[u8]) -> String {
        let mut m = self.0.clone();
        m.update(b"udm blind\0");
        m.update(&field.to_be_bytes());
        m.update(plaintext);
        hex(&m.finalize().into_bytes()[..BLIND_LEN])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Key {
        Key::from_bytes([b; KEY_LEN])
    }

    const R1: [u8; 16] = [1; 16];
    const R2: [u8; 16] = [2; 16];

    #[test]
    fn master_key_formats() {
        let hexed = "ab".repeat(32);
        let k = parse_master_key(format!("{hexed}\n").as_bytes()).unwrap();
        assert_eq!(k.fingerprint(), key(0xab).fingerprint());
        let b64 = B64.encode([0xab; 32]);
        let k2 = parse_master_key(b64.as_bytes()).unwrap();
        assert_eq!(k2.fingerprint(), k.fingerprint());
        let mut raw = [0xffu8; 32];
        raw[0] = 0x80; // not UTF-8
        assert!(parse_master_key(&raw).is_ok());
        for bad in [
            &b""[..],
            b"abc",
            &[b'g'; 64][..],
            b"c2hvcnQ=",
            &[0x41; 33][..],
        ] {
            let e = parse_master_key(bad).unwrap_err();
            assert_eq!(e.state, SqlState::InvalidParameterValue);
            assert!(!e.message.contains("ab"), "{}", e.message);
        }
        assert_ne!(key(1).fingerprint(), key(2).fingerprint());
        assert_eq!(format!("{:?}", key(7)), "Key(..)");
    }

    #[test]
    fn wrapped_keys_open_only_with_their_master_purpose_and_id() {
        let master = key(9);
        let dk = Key::random().unwrap();
        let w = wrap_key(&master, &dk, Purpose::Data, 1).unwrap();
        assert_eq!(w.len(), NONCE_LEN + KEY_LEN + TAG_LEN);
        let back = unwrap_key(&master, &w, Purpose::Data, 1).unwrap();
        assert_eq!(*back.0, *dk.0);
        assert!(!w.windows(KEY_LEN).any(|x| x == dk.0.as_ref()));
        for (m, p, id) in [
            (key(8), Purpose::Data, 1),
            (key(9), Purpose::Index, 1),
            (key(9), Purpose::Data, 2),
        ] {
            let e = unwrap_key(&m, &w, p, id).unwrap_err();
            assert_eq!(e.state, SqlState::DataCorrupted);
        }
        let mut bent = w.clone();
        bent[20] ^= 1;
        assert!(unwrap_key(&master, &bent, Purpose::Data, 1).is_err());
        assert!(unwrap_key(&master, &w[..10], Purpose::Data, 1).is_err());
        // a fresh nonce each time
        assert_ne!(w, wrap_key(&master, &dk, Purpose::Data, 1).unwrap());
    }

    #[test]
    fn values_round_trip_and_are_bound_to_record_and_field() {
        let dk = key(3);
        let s = seal(&dk, 4, None, &R1, 7, b"123-45-6789").unwrap();
        assert!(looks_sealed(&s));
        assert!(!s.contains("123-45"));
        let env = parse_envelope(&s).unwrap();
        assert_eq!(env.key_id, 4);
        assert_eq!(env.blind, "");
        assert_eq!(open(&dk, &env, &R1, 7).unwrap(), b"123-45-6789");
        // another record, another field, another key: no plaintext
        assert_eq!(
            open(&dk, &env, &R2, 7).unwrap_err().state,
            SqlState::DataCorrupted
        );
        assert!(open(&dk, &env, &R1, 8).is_err());
        assert!(open(&key(4), &env, &R1, 7).is_err());
        // the key id is bound too
        let moved = s.replacen("udm1:4:", "udm1:5:", 1);
        assert!(open(&dk, &parse_envelope(&moved).unwrap(), &R1, 7).is_err());
        // fresh nonce per value, across refills of the buffer
        assert_ne!(s, seal(&dk, 4, None, &R1, 7, b"123-45-6789").unwrap());
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let v = seal(&dk, 4, None, &R1, 7, b"x").unwrap();
            let raw = B64.decode(parse_envelope(&v).unwrap().body).unwrap();
            assert!(seen.insert(raw[..NONCE_LEN].to_vec()), "a nonce came twice");
        }
        // empty plaintext
        let e = seal(&dk, 1, None, &R1, 1, b"").unwrap();
        assert_eq!(
            open(&dk, &parse_envelope(&e).unwrap(), &R1, 1).unwrap(),
            b""
        );
    }

    #[test]
    fn blind_index_is_keyed_per_field_and_bound_in() {
        let ik = key(5);
        let a = blind_index(&ik, 1, b"x@example.com");
        assert_eq!(a.len(), 32);
        assert_eq!(a, blind_index(&ik, 1, b"x@example.com"));
        assert_ne!(a, blind_index(&ik, 2, b"x@example.com"));
        assert_ne!(a, blind_index(&key(6), 1, b"x@example.com"));
        assert_ne!(a, blind_index(&ik, 1, b"y@example.com"));
        let dk = key(3);
        let s = seal(&dk, 1, Some(&a), &R1, 1, b"x@example.com").unwrap();
        assert_eq!(s.split(':').nth(2), Some(a.as_str()));
        let env = parse_envelope(&s).unwrap();
        assert_eq!(env.blind, a);
        assert!(open(&dk, &env, &R1, 1).is_ok());
        // editing the blind index next to the value breaks it
        let other = blind_index(&ik, 1, b"y@example.com");
        let forged = s.replace(&a, &other);
        assert!(open(&dk, &parse_envelope(&forged).unwrap(), &R1, 1).is_err());
    }

    #[test]
    fn base64_is_read_as_the_base64_crate_reads_it() {
        use proptest::prelude::*;
        let agree = |text: &[u8]| {
            let mut out = vec![7u8; 3];
            let ours = b64_decode_into(text, &mut out).map(|()| out);
            let theirs = B64.decode(text).ok();
            assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(text));
        };
        for t in [
            &b""[..],
            b"AA==",
            b"AAA=",
            b"AAAA",
            b"AB==",
            b"AAB=",
            b"A===",
            b"====",
            b"A=A=",
            b"AA=A",
            b"AAAA=",
            b"AAA",
            b"AA:A",
            b"AA\xc3\xa9",
            b"////",
            b"+/+/AA==",
        ] {
            agree(t);
        }
        let mut runner = proptest::test_runner::TestRunner::default();
        runner
            .run(&proptest::collection::vec(any::<u8>(), 0..80), |bytes| {
                // what seal writes, and the same with a letter changed
                let text = B64.encode(&bytes);
                agree(text.as_bytes());
                let mut bent = text.clone().into_bytes();
                if let Some(c) = bent.last_mut() {
                    *c = b"A=/+:"[bytes.len() % 5];
                }
                agree(&bent);
                Ok(())
            })
            .unwrap();
        runner
            .run(
                &proptest::collection::vec(
                    prop_oneof![Just(b'='), Just(b'A'), Just(b'Q'), Just(b'/'), any::<u8>()],
                    0..12,
                ),
                |text| {
                    agree(&text);
                    Ok(())
                },
            )
            .unwrap();
    }

    #[test]
    fn open_in_reuses_the_buffer_and_seal_into_replaces_the_output() {
        let dk = key(3).sealer();
        let mut out = String::from("left over");
        let long = vec![b'x'; SMALL + 100];
        let mut buf = Vec::new();
        for (i, p) in [&b"short"[..], &long[..], b"", b"again"].iter().enumerate() {
            seal_into(&dk, 2, None, &R1, 9, p, &mut out).unwrap();
            assert!(out.starts_with("udm1:2::"), "{out}");
            let env = parse_envelope(&out).unwrap();
            assert_eq!(
                open_in(&dk, &env, &R1, 9, &mut buf).unwrap(),
                *p,
                "value {i}"
            );
            assert_eq!(open_with(&dk, &env, &R1, 9).unwrap(), *p);
            assert!(open_in(&dk, &env, &R2, 9, &mut buf).is_err());
        }
    }

    /// A child forked after the parent read its nonces takes none of them.
    #[test]
    fn a_forked_child_never_reuses_its_parents_nonces() {
        let dk = key(3).sealer();
        let nonce_of =
            |v: &str| B64.decode(parse_envelope(v).unwrap().body).unwrap()[..NONCE_LEN].to_vec();
        // the parent's buffer is filled
        let _ = seal_with(&dk, 1, None, &R1, 1, b"x").unwrap();
        let mut fds = [0i32; 2];
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // the child: its next nonce, to the parent
            let n = seal_with(&dk, 1, None, &R1, 1, b"x").map(|v| nonce_of(&v));
            let n = n.unwrap_or_default();
            unsafe {
                libc::write(fds[1], n.as_ptr().cast(), n.len());
                libc::_exit(0);
            }
        }
        let mut got = [0u8; NONCE_LEN];
        let read = unsafe { libc::read(fds[0], got.as_mut_ptr().cast(), NONCE_LEN) };
        let mut status = 0;
        unsafe {
            libc::waitpid(pid, &mut status, 0);
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        assert_eq!(read, NONCE_LEN as isize, "the child sealed a value");
        let mine = nonce_of(&seal_with(&dk, 1, None, &R1, 1, b"x").unwrap());
        assert_ne!(got.to_vec(), mine, "the child took the parent's next nonce");
    }

    #[test]
    fn split_stored_finds_what_parse_envelope_finds() {
        let dk = key(3);
        let blind = blind_index(&key(5), 1, b"v");
        let mut cases = vec![
            seal(&dk, 12, None, &R1, 1, b"v").unwrap(),
            seal(&dk, 1, Some(&blind), &R1, 1, b"v").unwrap(),
        ];
        for s in [
            "plain",
            "udm1:",
            "udm1::x",
            "udm1:1:x",
            "udm1:a::x",
            "udm1:1:zz:x",
            "udm1:99999999999::x",
            "udm1:2147483648::x",
            "udm1:2147483647::x",
            "udm1:1::x:y",
            "UDM1:1::x",
            "udm1:1::",
        ] {
            cases.push(s.to_string());
        }
        for s in &cases {
            let strict = parse_envelope(s);
            let lenient = split_stored(s.as_bytes());
            if let Some(e) = &strict {
                let want = StoredParts {
                    key_id: e.key_id,
                    blind: e.blind.as_bytes(),
                    body: e.body.as_bytes(),
                };
                assert_eq!(lenient, Some(want), "{s}");
            }
        }
        // what it leaves to the decryption: a value with such parts does not open
        let dks = dk.sealer();
        let mut buf = Vec::new();
        let ok = &cases[1];
        let env = parse_envelope(ok).unwrap();
        let other_blind = ok.replacen(env.blind, &"g".repeat(32), 1);
        let p = split_stored(other_blind.as_bytes()).unwrap();
        assert!(parse_envelope(&other_blind).is_none());
        assert!(open_parts(&dks, p.key_id, p.blind, p.body, &R1, 1, &mut buf).is_err());
        let colon = format!("{ok}:");
        let p = split_stored(colon.as_bytes()).unwrap();
        assert!(parse_envelope(&colon).is_none());
        assert!(open_parts(&dks, p.key_id, p.blind, p.body, &R1, 1, &mut buf).is_err());
        let p = split_stored(ok.as_bytes()).unwrap();
        let at = open_parts(&dks, p.key_id, p.blind, p.body, &R1, 1, &mut buf).unwrap();
        assert_eq!(&buf[at], b"v");
        assert!(open_parts(&dks, p.key_id, p.blind, p.body, &R2, 1, &mut buf).is_err());
    }

    #[test]
    fn envelope_parsing_refuses_other_text() {
        for s in [
            "plain",
            "udm1:",
            "udm1::x",
            "udm1:1:x",
            "udm1:a::x",
            "udm1:1:zz:x",
            "udm1:99999999999::x",
            "udm1:1::x:y",
            "UDM1:1::x",
        ] {
            assert!(parse_envelope(s).is_none(), "{s}");
        }
        assert!(parse_envelope("udm1:1::").is_some());
        let dk = key(1);
        let env = parse_envelope("udm1:1::!!!").unwrap();
        assert!(open(&dk, &env, &R1, 1).is_err());
        let env = parse_envelope("udm1:1::AAAA").unwrap();
        assert!(open(&dk, &env, &R1, 1).is_err());
    }
}

/// How encrypted fields are defined, made and queried (the crypto above is in `tests`).
#[cfg(test)]
mod field_tests {
    use crate::ddl::{self, Ctx, Step};
    use crate::definition::{apply_field_changes, parse_field, EntityDef, Source};
    use crate::error::SqlState;
    use crate::query::path::tests::TestModel;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn customer() -> serde_json::Value {
        json!({"fields": [
            {"name": "name", "type": "text"},
            {"name": "ssn", "type": "text", "encrypted": true, "unique": true, "max_length": 11},
            {"name": "email", "type": "email", "encrypted": true, "index": true},
            {"name": "notes", "type": "long_text", "encrypted": true}
        ]})
    }

    fn model() -> TestModel {
        let mut m = BTreeMap::new();
        m.insert(
            "customer".to_string(),
            EntityDef::parse("customer", &customer(), Source::Caller).unwrap(),
        );
        TestModel(m)
    }

    #[test]
    fn the_option_is_kept_and_refused_where_it_cannot_hold() {
        let mut f = parse_field(
            &json!({"name": "ssn", "type": "text", "encrypted": true}),
            Source::Caller,
        )
        .unwrap();
        f.id = 1;
        assert!(f.encrypted && !f.blind_indexed());
        assert_eq!(
            crate::definition::field_to_json(&f)["encrypted"],
            json!(true)
        );
        for (def, state, words) in [
            (
                json!({"name": "n", "type": "integer", "encrypted": true}),
                SqlState::FeatureNotSupported,
                "cannot be encrypted",
            ),
            (
                json!({"name": "n", "type": "json", "encrypted": true, "index": true}),
                SqlState::FeatureNotSupported,
                "cannot have an index",
            ),
            (
                json!({"name": "n", "type": "text", "encrypted": true, "default": "x"}),
                SqlState::FeatureNotSupported,
                "cannot have a default",
            ),
            (
                json!({"name": "n", "type": "text", "encrypted": "yes"}),
                SqlState::InvalidParameterValue,
                "encrypted",
            ),
        ] {
            let e = parse_field(&def, Source::Caller).unwrap_err();
            assert_eq!(e.state, state, "{def}");
            assert!(e.message.contains(words), "{}", e.message);
            assert!(e.message.contains("field \"n\""), "{}", e.message);
        }
        // turning it on or off leaves the field pending (its values are converted later);
        // changing what the stored values carry is refused
        let mut plain = parse_field(&json!({"name": "n", "type": "text"}), Source::Caller).unwrap();
        plain.id = 2;
        let on = apply_field_changes(&plain, &json!({"encrypted": true})).unwrap();
        assert!(on.encrypted);
        assert_eq!(on.encryption_pending, Some(crate::definition::Toggle::On));
        let back = apply_field_changes(&on, &json!({"encrypted": false})).unwrap();
        assert!(
            back.encrypted,
            "still encrypted until its values are opened"
        );
        assert_eq!(
            back.encryption_pending,
            Some(crate::definition::Toggle::Off)
        );
        let e = apply_field_changes(&f, &json!({"encrypted": false, "max_length": 3})).unwrap_err();
        assert_eq!(e.state, SqlState::FeatureNotSupported, "{}", e.message);
        let e = apply_field_changes(&f, &json!({"unique": true})).unwrap_err();
        assert_eq!(e.state, SqlState::FeatureNotSupported);
        assert!(apply_field_changes(&f, &json!({"label": "SSN"})).is_ok());
        // rules and indexes over fields cannot read sealed values
        let ruled = EntityDef::parse(
            "c",
            &json!({"fields": [{"name": "s", "type": "text", "encrypted": true}],
                    "rules": [{"name": "r", "check": "s <> ''"}]}),
            Source::Caller,
        )
        .unwrap();
        let ctx = Ctx {
            schema: "acme",
            role: "udm_t_acme",
            access: false,
            model: None,
            citus: false,
        };
        let e = ddl::create_entity(&ctx, &ruled).unwrap_err();
        assert!(
            e.message
                .contains("is encrypted and cannot be used in a rule"),
            "{}",
            e.message
        );
        assert_eq!(e.state, SqlState::FeatureNotSupported, "{}", e.message);
        let e = EntityDef::parse(
            "c",
            &json!({"fields": [{"name": "s", "type": "text", "encrypted": true}],
                    "indexes": [{"fields": ["s"]}]}),
            Source::Caller,
        )
        .unwrap_err();
        assert_eq!(e.state, SqlState::FeatureNotSupported, "{}", e.message);
    }

    #[test]
    fn json_and_dates_are_stored_as_text_and_read_back_typed() {
        let mut m = BTreeMap::new();
        let def = EntityDef::parse(
            "visit",
            &json!({"fields": [
                {"name": "doc", "type": "json", "encrypted": true},
                {"name": "born", "type": "date", "encrypted": true, "index": true},
                {"name": "seen", "type": "datetime", "encrypted": true}]}),
            Source::Caller,
        )
        .unwrap();
        assert!(def.fields.iter().all(|f| f.pg_type() == "text"));
        m.insert("visit".to_string(), def);
        let m = TestModel(m);
        let t = crate::query::select::compile(
            &m,
            "visit",
            &json!({"columns": ["doc", "born", "seen"], "filters": {"born": "2001-02-03"}}),
        )
        .unwrap();
        // udm_query selects the stored values and their record ids; they are opened (and read
        // back typed) where the rows become JSON
        assert!(
            t.sql.starts_with("SELECT t0.\"doc\" AS c0, t0.\"born\" AS c1, t0.\"seen\" AS c2, t0.\"id\" AS k0 FROM"),
            "{}",
            t.sql
        );
        assert!(!t.sql.contains("udm.decrypt_field"), "{}", t.sql);
        let out = t.rows.as_ref().unwrap();
        let forms: Vec<(usize, usize, u32, Option<&str>)> = out
            .sealed
            .iter()
            .map(|s| (s.column, s.id, s.sealed.field, s.sealed.form.map(|f| f.1)))
            .collect();
        assert_eq!(
            forms,
            vec![
                (0, 3, 1, Some("jsonb")),
                (1, 3, 2, Some("date")),
                (2, 3, 3, Some("timestamp with time zone"))
            ]
        );
        // a distinct page compares plaintexts: it decrypts in SQL
        let d = crate::query::select::compile(
            &m,
            "visit",
            &json!({"columns": ["doc", "born"], "distinct": true}),
        )
        .unwrap();
        assert!(
            d.sql
                .contains("(udm.decrypt_field('acme', 'visit', 1, t0.\"id\", t0.\"doc\"))::jsonb"),
            "{}",
            d.sql
        );
        assert!(
            d.sql
                .contains("(udm.decrypt_field('acme', 'visit', 2, t0.\"id\", t0.\"born\"))::date"),
            "{}",
            d.sql
        );
        assert!(d.rows.as_ref().unwrap().sealed.is_empty());
        assert!(
            t.sql
                .contains("udm.blind_index('acme', 'visit', 2, (to_char(($"),
            "the filter value is put in the canonical form: {}",
            t.sql
        );
        let e =
            crate::query::select::compile(&m, "visit", &json!({"columns": ["doc.a"]})).unwrap_err();
        assert_eq!(e.state, SqlState::FeatureNotSupported, "{}", e.message);
        assert!(
            e.message.contains("its keys cannot be followed"),
            "{}",
            e.message
        );
    }

    #[test]
    fn tables_hold_text_with_blind_indexes_and_no_checks_on_ciphertext() {
        let def = EntityDef::parse("customer", &customer(), Source::Caller).unwrap();
        let ctx = Ctx {
            schema: "acme",
            role: "udm_t_acme",
            access: false,
            model: None,
            citus: false,
        };
        let sql: Vec<String> = ddl::create_entity(&ctx, &def)
            .unwrap()
            .into_iter()
            .filter_map(|s| match s {
                Step::Sql(s) => Some(s),
                _ => None,
            })
            .collect();
        let all = sql.join("\n");
        assert!(all.contains("\"ssn\" text"), "{all}");
        assert!(
            all.contains("CREATE UNIQUE INDEX \"customer__ssn__key\" ON \"acme\".\"customer\" ((split_part(\"ssn\", ':', 3)))"),
            "{all}"
        );
        assert!(
            all.contains("CREATE INDEX \"customer__email__idx\" ON \"acme\".\"customer\" USING hash ((split_part(\"email\", ':', 3)))"),
            "{all}"
        );
        // the max_length and email format rules are the trigger's, on the plaintext
        assert!(!all.contains("char_length(\"ssn\")"), "{all}");
        assert!(!all.contains("\"email\" ~*"), "{all}");
        assert!(!all.contains("\"notes\"))"), "{all}");
    }

    #[test]
    fn reads_decrypt_equality_uses_the_blind_index_and_the_rest_is_refused() {
        let m = model();
        let t = crate::query::select::compile(
            &m,
            "customer",
            &json!({"columns": ["name", "ssn"], "filters": {"ssn": "123", "email": {"in": ["a@b.cd"]}}}),
        )
        .unwrap();
        assert!(
            t.sql
                .starts_with("SELECT t0.\"name\" AS c0, t0.\"ssn\" AS c1, t0.\"id\" AS k0 FROM"),
            "{}",
            t.sql
        );
        let sealed = &t.rows.as_ref().unwrap().sealed;
        assert_eq!(
            (
                sealed.len(),
                sealed[0].column,
                sealed[0].id,
                sealed[0].sealed.field
            ),
            (1, 1, 2, 2)
        );
        assert!(
            t.sql.contains(
                "(split_part(t0.\"ssn\", ':', 3) = udm.blind_index('acme', 'customer', 2, $"
            ),
            "{}",
            t.sql
        );
        assert!(t.sql.contains("split_part(t0.\"email\", ':', 3) = ANY (ARRAY(SELECT udm.blind_index('acme', 'customer', 3, v.x) FROM unnest($"), "{}", t.sql);
        assert!(!t.sql.contains("123"), "values stay parameters: {}", t.sql);
        let nulls = crate::query::select::compile(
            &m,
            "customer",
            &json!({"filters": {"notes": null, "ssn": {"is_null": false}}}),
        )
        .unwrap();
        assert!(
            nulls.sql.contains("(t0.\"notes\" IS NULL)"),
            "{}",
            nulls.sql
        );
        for (spec, words) in [
            (json!({"sort": ["ssn"]}), "cannot be sorted by"),
            (
                json!({"filters": {"ssn": {"gt": "1"}}}),
                "cannot be filtered with \"gt\"",
            ),
            (
                json!({"filters": {"email": {"contains": "x"}}}),
                "cannot be filtered with \"contains\"",
            ),
            (json!({"filters": {"notes": "x"}}), "without a blind index"),
        ] {
            let e = crate::query::select::compile(&m, "customer", &spec).unwrap_err();
            assert_eq!(e.state, SqlState::FeatureNotSupported, "{spec}");
            assert!(e.message.contains(words), "{}", e.message);
            assert!(e.message.contains("entity \"customer\""), "{}", e.message);
            assert!(e.hint.is_some());
        }
        // an upsert cannot name the conflict target of a blind index
        let e = crate::records::check_upsert_key(m.0.get("customer").unwrap(), &["ssn".into()])
            .unwrap_err();
        assert_eq!(e.state, SqlState::FeatureNotSupported);
        assert!(
            e.message.contains("field \"ssn\" of entity \"customer\""),
            "{}",
            e.message
        );
        // the record JSON of udm_get and writes decrypts too
        let def = m.0.get("customer").unwrap();
        let j = crate::records::row_json("acme", def, "t0");
        assert!(
            j.contains(
                "'notes', udm.decrypt_field('acme', 'customer', 4, t0.\"id\", t0.\"notes\")"
            ),
            "{j}"
        );
    }
}
