//! The large text of an outcome (traceback, captured output, long messages,
//! user properties), kept out of the hot outcome row as one compressed blob.
//!
//! Most outcomes have none of it (a passing test keeps no output by
//! default), so most rows have no blob at all. The encoding is the same for
//! every backend: a format byte, then for zstd the raw length, then fields
//! as (tag, varint length, bytes). Decoding checks every length, so a damaged
//! blob is an error, never a panic or a wrong answer.

use std::cell::RefCell;

use super::blob::{VarintError, put_varint, read_varint, unzip};
use super::deps::DepSet;
use super::fingerprint::StoredCause;
use crate::error::{Error, Result};
use crate::model::Outcome;

/// Messages up to this many bytes stay in the outcome row; longer ones move here.
pub const INLINE_MESSAGE_BYTES: usize = 256;

/// Blobs shorter than this are stored uncompressed: zstd's frame would cost more than it saves.
const COMPRESS_FROM: usize = 64;

/// zstd level: the default; higher levels saved little on tracebacks of a
/// few KB and cost the thread that receives them several times more.
const LEVEL: i32 = 3;

/// Most bytes a blob may decode to; a larger claim is a damaged blob.
const MAX_DECODED: usize = 256 * 1024 * 1024;

const RAW: u8 = 0;
const ZSTD: u8 = 1;

const MESSAGE: u8 = 1;
const LONGREPR: u8 = 2;
const STDOUT: u8 = 3;
const STDERR: u8 = 4;
const LOG: u8 = 5;
const PROPERTY: u8 = 6;

/// Whether `o` has anything that goes into a blob.
pub fn has_detail(o: &Outcome) -> bool {
    o.message.len() > INLINE_MESSAGE_BYTES
        || !o.longrepr.is_empty()
        || !o.stdout.is_empty()
        || !o.stderr.is_empty()
        || !o.log.is_empty()
        || !o.user_properties.is_empty()
}

/// The message to keep in the row: the whole message when short, else none.
pub fn inline_message(o: &Outcome) -> Option<&str> {
    (!o.message.is_empty() && o.message.len() <= INLINE_MESSAGE_BYTES).then_some(&o.message)
}

fn put_field(out: &mut Vec<u8>, tag: u8, text: &str) {
    out.push(tag);
    put_varint(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

/// Encodes the outcome's large text with a reusable compressor.
pub struct Encoder {
    zstd: Option<zstd::bulk::Compressor<'static>>,
    raw: Vec<u8>,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    /// A new encoder.
    pub fn new() -> Self {
        Encoder {
            zstd: zstd::bulk::Compressor::new(LEVEL).ok(),
            raw: Vec::new(),
        }
    }

    /// The blob for `o`, or `None` when it has no large text.
    pub fn encode(&mut self, o: &Outcome) -> Option<Vec<u8>> {
        if !has_detail(o) {
            return None;
        }
        let raw = &mut self.raw;
        raw.clear();
        if o.message.len() > INLINE_MESSAGE_BYTES {
            put_field(raw, MESSAGE, &o.message);
        }
        for (tag, text) in [
            (LONGREPR, &o.longrepr),
            (STDOUT, &o.stdout),
            (STDERR, &o.stderr),
            (LOG, &o.log),
        ] {
            if !text.is_empty() {
                put_field(raw, tag, text);
            }
        }
        let mut body = Vec::new();
        for (name, value) in &o.user_properties {
            body.clear();
            put_varint(&mut body, name.len() as u64);
            body.extend_from_slice(name.as_bytes());
            body.extend_from_slice(value.as_bytes());
            raw.push(PROPERTY);
            put_varint(raw, body.len() as u64);
            raw.extend_from_slice(&body);
        }
        if raw.len() >= COMPRESS_FROM
            && let Some(z) = self.zstd.as_mut()
            && let Ok(packed) = z.compress(raw)
            && packed.len() + 10 < raw.len()
        {
            let mut out = Vec::with_capacity(packed.len() + 10);
            out.push(ZSTD);
            put_varint(&mut out, raw.len() as u64);
            out.extend_from_slice(&packed);
            return Some(out);
        }
        let mut out = Vec::with_capacity(raw.len() + 1);
        out.push(RAW);
        out.extend_from_slice(raw);
        Some(out)
    }
}

thread_local! {
    /// One encoder (and zstd context) per thread that prepares outcomes.
    static ENCODER: RefCell<Encoder> = RefCell::new(Encoder::new());
}

/// An outcome ready for a backend to store: its large text is in `detail`
/// (encoded off the backend's writer, on the thread that received it) and
/// cleared from `outcome`, whose `message` is left only when it is short
/// enough to stay in the row.
#[derive(Debug, Clone)]
pub struct NewOutcome {
    /// The outcome without its large text.
    pub outcome: Outcome,
    /// The encoded large text, if it has any.
    pub detail: Option<Vec<u8>>,
    /// A failure's cause, computed here from its full text, once: what
    /// clusters and new causes are counted from.
    pub cause: Option<StoredCause>,
    /// Its dependency set (its keys, moved out of `outcome.deps`, and
    /// their digest, computed here once).
    pub deps: Option<DepSet>,
}

impl AsRef<Outcome> for NewOutcome {
    fn as_ref(&self) -> &Outcome {
        &self.outcome
    }
}

/// Moves the outcome's large text into its blob, after fingerprinting a
/// failure from it.
pub fn split(mut outcome: Outcome) -> NewOutcome {
    let cause = StoredCause::of(&outcome);
    // The keys move into the set: one copy per outcome waiting to be stored.
    let deps = outcome.deps.take().map(DepSet::of);
    let detail = ENCODER.with(|e| e.borrow_mut().encode(&outcome));
    if detail.is_some() {
        if outcome.message.len() > INLINE_MESSAGE_BYTES {
            outcome.message.clear();
        }
        outcome.longrepr = String::new();
        outcome.stdout = String::new();
        outcome.stderr = String::new();
        outcome.log = String::new();
        outcome.user_properties = Vec::new();
    }
    NewOutcome {
        outcome,
        detail,
        cause,
        deps,
    }
}

fn damaged(why: &str) -> Error {
    Error::Internal(format!("a stored outcome's detail is damaged: {why}"))
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64> {
        read_varint(self.data, &mut self.at).map_err(|e| match e {
            VarintError::CutShort => damaged("cut short"),
            VarintError::TooLong => damaged("a length is too long"),
        })
    }

    fn bytes(&mut self, n: u64) -> Result<&'a [u8]> {
        let n = usize::try_from(n).map_err(|_| damaged("a length is too long"))?;
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.data.len())
            .ok_or_else(|| damaged("cut short"))?;
        let out = &self.data[self.at..end];
        self.at = end;
        Ok(out)
    }
}

fn text(bytes: &[u8]) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| damaged("text is not UTF-8"))
}

/// Fills the large text fields of `o` from its blob.
pub fn decode_into(blob: &[u8], o: &mut Outcome) -> Result<()> {
    let (&format, rest) = blob.split_first().ok_or_else(|| damaged("empty"))?;
    let unpacked;
    let raw: &[u8] = match format {
        RAW => rest,
        ZSTD => {
            let mut r = Reader { data: rest, at: 0 };
            let len = usize::try_from(r.varint()?).map_err(|_| damaged("too large"))?;
            if len > MAX_DECODED {
                return Err(damaged("too large"));
            }
            unpacked = unzip(&rest[r.at..], len)
                .map_err(|e| damaged(&format!("cannot decompress ({e})")))?;
            if unpacked.len() != len {
                return Err(damaged("wrong length"));
            }
            &unpacked
        }
        _ => return Err(damaged("unknown format")),
    };
    let mut r = Reader { data: raw, at: 0 };
    while r.at < raw.len() {
        let tag = r.bytes(1)?[0];
        let len = r.varint()?;
        let body = r.bytes(len)?;
        match tag {
            MESSAGE => o.message = text(body)?,
            LONGREPR => o.longrepr = text(body)?,
            STDOUT => o.stdout = text(body)?,
            STDERR => o.stderr = text(body)?,
            LOG => o.log = text(body)?,
            PROPERTY => {
                let mut p = Reader { data: body, at: 0 };
                let name_len = p.varint()?;
                let name = text(p.bytes(name_len)?)?;
                let value = text(&body[p.at..])?;
                o.user_properties.push((name, value));
            }
            _ => return Err(damaged("unknown field")),
        }
    }
    Ok(())
}

/// The message stored in a blob, if any (for reads that need only the message).
pub fn decode_message(blob: &[u8]) -> Result<Option<String>> {
    let mut o = Outcome::new(1, "-", crate::model::TestOutcome::Failed);
    decode_into(blob, &mut o)?;
    Ok((!o.message.is_empty()).then_some(o.message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TestOutcome;

    fn full() -> Outcome {
        let mut o = Outcome::new(7, "t.py::t", TestOutcome::Failed);
        o.message = "M".repeat(300);
        o.longrepr = "def test():\n>   assert 1 == 2\nE   assert 1 == 2\n".repeat(40);
        o.stdout = "out é\n".into();
        o.stderr = "err\n".into();
        o.log = "WARNING x".into();
        o.user_properties = vec![
            ("ticket".into(), "JIRA-1".into()),
            ("".into(), "".into()),
            ("é".repeat(100), "v".repeat(200)),
        ];
        o
    }

    #[test]
    fn every_large_field_round_trips_and_a_long_traceback_is_compressed() {
        let mut enc = Encoder::new();
        let o = full();
        let blob = enc.encode(&o).unwrap();
        assert_eq!(blob[0], ZSTD);
        assert!(blob.len() < o.longrepr.len() / 4, "{} bytes", blob.len());
        let mut back = Outcome::new(7, "t.py::t", TestOutcome::Failed);
        decode_into(&blob, &mut back).unwrap();
        assert_eq!(back, o);
    }

    #[test]
    fn an_outcome_with_no_large_text_has_no_blob_and_a_small_one_is_stored_raw() {
        let mut enc = Encoder::new();
        let mut o = Outcome::new(1, "t.py::t", TestOutcome::Skipped);
        o.message = "short reason".into();
        assert!(enc.encode(&o).is_none());
        assert_eq!(inline_message(&o), Some("short reason"));
        o.stdout = "x".into();
        let blob = enc.encode(&o).unwrap();
        assert_eq!(blob[0], RAW);
        let mut back = Outcome::new(1, "t.py::t", TestOutcome::Skipped);
        back.message = o.message.clone();
        decode_into(&blob, &mut back).unwrap();
        assert_eq!(back, o);
    }

    #[test]
    fn a_split_outcome_keeps_only_its_short_fields_and_the_blob_restores_the_rest() {
        let o = full();
        let new = split(o.clone());
        assert!(new.outcome.longrepr.is_empty() && new.outcome.message.is_empty());
        assert!(new.outcome.user_properties.is_empty());
        let mut back = new.outcome.clone();
        decode_into(new.detail.as_deref().unwrap(), &mut back).unwrap();
        assert_eq!(back, o);
        let mut short = Outcome::new(1, "t.py::t", TestOutcome::Passed);
        short.message = "fine".into();
        let new = split(short.clone());
        assert!(new.detail.is_none());
        assert_eq!(new.outcome, short);
    }

    #[test]
    fn a_damaged_blob_is_an_error_not_a_panic() {
        let mut enc = Encoder::new();
        let blob = enc.encode(&full()).unwrap();
        let mut o = Outcome::new(1, "-", TestOutcome::Failed);
        for cut in [0, 1, 2, 5, blob.len() / 2, blob.len() - 1] {
            assert!(decode_into(&blob[..cut], &mut o).is_err(), "cut at {cut}");
        }
        assert!(decode_into(&[9, 1, 2], &mut o).is_err());
        assert!(decode_into(&[RAW, 2, 0xFF, 0xFF, 0xFF], &mut o).is_err());
    }
}
