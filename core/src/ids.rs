//! Record ids: UUID version 7 (RFC 9562, section 5.7).
//!
//! A version 7 id starts with its creation time: 48 bits of Unix time in milliseconds, then 12
//! bits of the millisecond's fraction (RFC 9562 section 6.2, method 3), then 62 random bits. Ids
//! made one after another sort in the order they were made, so the entity's primary key and the
//! audit's record index grow at their right edge, as a sequence's do, instead of touching a
//! random page of the index for every new record. The price: an id tells when it was made.
//!
//! One clock per backend keeps its ids strictly increasing, also when the system clock steps
//! back or two ids fall in the same 1/4096 ms.

/// The SQL that makes a new record id (the `id` column's default, and batches' missing ids).
pub const NEW_ID_SQL: &str = "udm.uuid_v7()";

/// Ticks of 1/4096 ms since the Unix epoch (48 + 12 bits).
const TICKS_PER_MS: u64 = 4096;

#[derive(Debug, Default)]
pub struct V7Clock {
    last: u64,
}

impl V7Clock {
    pub const fn new() -> Self {
        V7Clock { last: 0 }
    }

    /// The next id, for the time `unix_nanos` and 8 random bytes (62 bits of them are used).
    pub fn next(&mut self, unix_nanos: u128, random: [u8; 8]) -> [u8; 16] {
        let ms = (unix_nanos / 1_000_000) as u64;
        let frac = ((unix_nanos % 1_000_000) as u64 * TICKS_PER_MS) / 1_000_000;
        let mut ticks = (ms * TICKS_PER_MS + frac) & ((1u64 << 60) - 1);
        if ticks <= self.last {
            ticks = self.last + 1;
        }
        self.last = ticks;
        layout(ticks, random)
    }
}

/// The bytes of a version 7 id with the time `ticks` (1/4096 ms since the Unix epoch).
fn layout(ticks: u64, random: [u8; 8]) -> [u8; 16] {
    let ms = ticks / TICKS_PER_MS;
    let frac = (ticks % TICKS_PER_MS) as u16;
    let mut out = [0u8; 16];
    out[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    out[6] = 0x70 | (frac >> 8) as u8;
    out[7] = frac as u8;
    out[8..].copy_from_slice(&random);
    out[8] = 0x80 | (out[8] & 0x3f);
    out
}

/// Lower-case hexadecimal of `b`.
pub fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

/// The bytes of hexadecimal text (either case); None for anything else.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let v = |c: u8| -> Option<u8> { (c as char).to_digit(16).map(|d| d as u8) };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(v(p[0])? << 4 | v(p[1])?))
        .collect()
}

/// The 16 bytes of a UUID's text (hyphens anywhere are skipped, as PostgreSQL's `uuid_in`
/// accepts them); None for anything else.
pub fn uuid_bytes(s: &str) -> Option<[u8; 16]> {
    let digits: String = s.chars().filter(|c| *c != '-').collect();
    unhex(&digits)?.try_into().ok()
}

/// A UUID's canonical text (8-4-4-4-12 lower-case hex digits).
pub fn uuid_text(b: &[u8; 16]) -> String {
    let h = hex(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_uuid_text_round_trip() {
        let b: [u8; 16] = *b"\x6f\x96\x19\xff\x8b\x86\xd0\x11\xb4\x2d\x00\xc0\x4f\xc9\x64\xff";
        let t = uuid_text(&b);
        assert_eq!(t, "6f9619ff-8b86-d011-b42d-00c04fc964ff");
        assert_eq!(uuid_bytes(&t), Some(b));
        assert_eq!(uuid_bytes("6F9619FF8B86D011B42D00C04FC964FF"), Some(b));
        assert_eq!(uuid_bytes("6f9619ff-8b86-d011-b42d-00c04fc964f"), None);
        assert_eq!(uuid_bytes("6f9619ff-8b86-d011-b42d-00c04fc964fg"), None);
        assert_eq!(unhex("0aFf"), Some(vec![10, 255]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(hex(&[0, 171]), "00ab");
    }

    /// The creation time (Unix milliseconds) a version 7 id carries, or None for another version.
    fn v7_unix_ms(id: &[u8; 16]) -> Option<u64> {
        if id[6] >> 4 != 7 || id[8] >> 6 != 0b10 {
            return None;
        }
        let mut ms = [0u8; 8];
        ms[2..].copy_from_slice(&id[..6]);
        Some(u64::from_be_bytes(ms))
    }

    const T: u128 = 1_796_000_000_123_456_789; // 2026-11-30, some nanoseconds in

    #[test]
    fn version_variant_and_time_are_where_rfc_9562_puts_them() {
        let id = V7Clock::new().next(T, [0xff; 8]);
        assert_eq!(id[6] >> 4, 7, "version");
        assert_eq!(id[8] >> 6, 0b10, "variant");
        assert_eq!(v7_unix_ms(&id), Some(1_796_000_000_123));
        // 456_789 ns of the millisecond is 1871/4096
        assert_eq!((((id[6] & 0x0f) as u16) << 8) | id[7] as u16, 1871);
        // the random bits are kept, but for the two variant bits
        assert_eq!(id[8], 0xbf);
        assert_eq!(&id[9..], &[0xff; 7]);
        let mut v4 = id;
        v4[6] = 0x40 | (v4[6] & 0x0f);
        assert_eq!(v7_unix_ms(&v4), None);
    }

    #[test]
    fn ids_increase_within_a_tick_and_when_the_clock_steps_back() {
        let mut c = V7Clock::new();
        let a = c.next(T, [0xff; 8]);
        let b = c.next(T, [0x00; 8]); // same tick, smaller random part
        let back = c.next(T - 5_000_000_000, [0x00; 8]); // clock 5 s back
        let later = c.next(T + 1_000_000, [0x00; 8]);
        assert!(
            a < b && b < back && back < later,
            "{a:?} {b:?} {back:?} {later:?}"
        );
        // a step back keeps the newest time, it does not jump ahead
        assert_eq!(v7_unix_ms(&back), v7_unix_ms(&a));
        assert_eq!(v7_unix_ms(&later), Some(1_796_000_000_124));
    }

    #[test]
    fn ids_made_later_sort_later_as_postgres_compares_uuids() {
        // PostgreSQL compares uuids bytewise (memcmp), as [u8; 16] compares
        let mut c = V7Clock::new();
        let ids: Vec<[u8; 16]> = (0..1000u128)
            .map(|i| {
                c.next(
                    T + i * 37_000,
                    (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes(),
                )
            })
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }
}
