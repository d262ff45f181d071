//! What the stored blob formats ([`super::detail`], [`super::digest`]) are
//! built from: varints, and zstd decompression with one context per thread
//! (making a context costs more than decompressing a small blob).

use std::cell::RefCell;

/// Appends `v` as a varint (7 bits a byte, low bits first).
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarintError {
    /// The data ends inside it.
    CutShort,
    /// It is longer than 64 bits.
    TooLong,
}

/// Reads a varint at `*at`, moving past it.
#[inline]
pub fn read_varint(data: &[u8], at: &mut usize) -> Result<u64, VarintError> {
    // Nearly every number in these blobs is below 128: one byte.
    if let Some(&b) = data.get(*at)
        && b < 0x80
    {
        *at += 1;
        return Ok(u64::from(b));
    }
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *data.get(*at).ok_or(VarintError::CutShort)?;
        *at += 1;
        v |= u64::from(b & 0x7F) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(VarintError::TooLong)
}

thread_local! {
    static UNZIP: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        RefCell::new(zstd::bulk::Decompressor::new().ok());
}

/// Decompresses a zstd frame that decodes to at most `len` bytes.
pub fn unzip(data: &[u8], len: usize) -> std::io::Result<Vec<u8>> {
    UNZIP.with(|z| match z.borrow_mut().as_mut() {
        Some(z) => z.decompress(data, len),
        None => zstd::bulk::decompress(data, len),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_a_cut_one_is_an_error() {
        let mut out = Vec::new();
        for v in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            out.clear();
            put_varint(&mut out, v);
            let mut at = 0;
            assert_eq!(read_varint(&out, &mut at), Ok(v));
            assert_eq!(at, out.len());
            let mut at = 0;
            if out.len() > 1 {
                assert_eq!(
                    read_varint(&out[..out.len() - 1], &mut at),
                    Err(VarintError::CutShort)
                );
            }
        }
        let mut at = 0;
        assert_eq!(read_varint(&[0xFF; 11], &mut at), Err(VarintError::TooLong));
    }
}
