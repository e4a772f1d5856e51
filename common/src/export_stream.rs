//! The framing of the catch-up stream (`GET /internal/export`): each
//! [`ExportFrame`] is a 4-byte big-endian length followed by that many bytes
//! of postcard. The exporting counter writes frames with [`encode_frame`];
//! the importing counter cuts the bytes that arrive off the network, in
//! chunks of any size, back into frames with [`FrameReader`]. Both live
//! here, free of I/O, so that the `export_stream` fuzz target runs the very
//! code that decodes a peer's bytes.
//!
//! Binary rather than JSON lines because a catch-up copies millions of
//! items while the cluster keeps writing on the same cores: postcard costs
//! both ends a fraction of JSON's encoding and parsing, and the length
//! prefix lets the reader refuse an oversized frame before buffering it.

use crate::api::ExportFrame;
use crate::Error;

/// The `Content-Type` of the stream. The importer checks it, so a peer of
/// a version that still sends another format is reported as such rather
/// than as undecodable bytes. Version 2 sends every entry above `since`,
/// not only those up to `until`; a version-1 peer's stream could miss items
/// (docs/protocol.md, "Catch-up"), so an importer refuses it.
pub const CONTENT_TYPE: &str = "application/vnd.tally.export-frames.v2";

/// The longest frame a reader accepts. One frame is the items one
/// transaction added: at most a request's 100,000 items of two 256-byte
/// fields, about 52 MB of postcard. A peer announcing more is broken or
/// hostile, and must not make the importer buffer without end.
pub const MAX_FRAME_BYTES: usize = 128 * 1024 * 1024;

/// Bytes of the length in front of every frame.
const HEADER_BYTES: usize = 4;

/// Appends `frame`, length first, to `buf`.
pub fn encode_frame(buf: &mut Vec<u8>, frame: &ExportFrame) {
    let header_at = buf.len();
    buf.extend_from_slice(&[0; HEADER_BYTES]);
    // A struct of strings and integers always serialises into a Vec.
    *buf = postcard::to_extend(frame, std::mem::take(buf)).expect("export frames always serialise");
    let len = buf.len() - header_at - HEADER_BYTES;
    // Far below 4 GiB: one transaction's items (see MAX_FRAME_BYTES).
    let len = u32::try_from(len).expect("an export frame fits in 4 GiB");
    buf[header_at..header_at + HEADER_BYTES].copy_from_slice(&len.to_be_bytes());
}

/// Cuts a byte stream into length-prefixed frames and decodes each. A frame
/// is decoded only once all its bytes have arrived, so how the network
/// chunked the stream never changes what comes out; bytes after the last
/// whole frame are an incomplete frame (a cut stream) and never decoded.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Where the first frame not yet returned starts.
    start: usize,
    /// Frames returned so far, to say which one was bad.
    frames: u64,
}

impl FrameReader {
    pub fn new() -> Self {
        FrameReader::default()
    }

    /// Appends the next chunk of the stream.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete frame, decoded; `None` until all its bytes have
    /// arrived. A frame announcing more than [`MAX_FRAME_BYTES`] is an
    /// error as soon as its length is in, and stays one: the stream should
    /// be abandoned.
    pub fn next_frame(&mut self) -> Option<Result<ExportFrame, Error>> {
        let pending = &self.buf[self.start..];
        let header: [u8; HEADER_BYTES] = pending.get(..HEADER_BYTES)?.try_into().ok()?;
        let len = u32::from_be_bytes(header) as usize;
        if len > MAX_FRAME_BYTES {
            return Some(Err(Error::FrameTooLong {
                frame: self.frames,
                len,
                limit: MAX_FRAME_BYTES,
            }));
        }
        let body = pending.get(HEADER_BYTES..HEADER_BYTES + len)?;
        let frame = decode(body).map_err(|problem| Error::BadFrame {
            frame: self.frames,
            problem,
        });
        self.start += HEADER_BYTES + len;
        self.frames += 1;
        Some(frame)
    }

    /// Bytes received after the last complete frame.
    pub fn incomplete(&self) -> usize {
        self.buf.len() - self.start
    }
}

/// One frame's body, which must be exactly one postcard `ExportFrame`:
/// trailing bytes mean the two ends disagree on the format.
fn decode(body: &[u8]) -> Result<ExportFrame, String> {
    let (frame, rest) = postcard::take_from_bytes(body).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after the frame's value", rest.len()));
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ExportEntry;
    use crate::{CommitIndex, Item};

    fn frames() -> Vec<ExportFrame> {
        vec![
            ExportFrame::Entry(ExportEntry {
                index: CommitIndex(3),
                items: vec![Item::new("a", "t"), Item::new("b\n", "ü")],
            }),
            ExportFrame::End {
                through: CommitIndex(4),
            },
        ]
    }

    fn read_all(reader: &mut FrameReader) -> Vec<ExportFrame> {
        std::iter::from_fn(|| reader.next_frame())
            .map(|f| f.unwrap())
            .collect()
    }

    fn encoded(frames: &[ExportFrame]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for frame in frames {
            encode_frame(&mut bytes, frame);
        }
        bytes
    }

    #[test]
    fn frames_survive_any_chunking() {
        let bytes = encoded(&frames());
        for chunk in [1, 2, 7, bytes.len()] {
            let mut reader = FrameReader::new();
            let mut got = Vec::new();
            for piece in bytes.chunks(chunk) {
                reader.push(piece);
                got.extend(read_all(&mut reader));
            }
            assert_eq!(got, frames(), "chunks of {chunk}");
            assert_eq!(reader.incomplete(), 0);
        }
    }

    #[test]
    fn an_oversized_frame_is_refused_from_its_length_alone() {
        let mut reader = FrameReader::new();
        let len = (MAX_FRAME_BYTES as u32 + 1).to_be_bytes();
        reader.push(&len[..3]);
        assert!(reader.next_frame().is_none());
        reader.push(&len[3..]);
        for _ in 0..2 {
            assert!(matches!(
                reader.next_frame(),
                Some(Err(Error::FrameTooLong { frame: 0, .. }))
            ));
        }
    }

    #[test]
    fn a_cut_frame_is_never_decoded() {
        let bytes = encoded(&frames());
        let mut reader = FrameReader::new();
        reader.push(&bytes[..bytes.len() - 1]);
        assert_eq!(read_all(&mut reader), frames()[..1]);
        assert!(reader.next_frame().is_none());
        assert!(reader.incomplete() > 0);
    }

    #[test]
    fn a_bad_frame_is_an_error_not_a_panic() {
        let bad: [&[u8]; 4] = [
            // Empty body: no variant tag.
            &[0, 0, 0, 0],
            // Variant 7 does not exist.
            &[0, 0, 0, 1, 7],
            // `End` with a trailing byte after its index.
            &[0, 0, 0, 3, 1, 4, 0],
            // An entry claiming 200 items but carrying none.
            &[0, 0, 0, 3, 0, 1, 200],
        ];
        for (n, bytes) in bad.iter().enumerate() {
            let mut reader = FrameReader::new();
            reader.push(bytes);
            let got = reader.next_frame();
            assert!(
                matches!(got, Some(Err(Error::BadFrame { .. }))),
                "case {n}: {got:?}"
            );
        }
    }

    #[test]
    fn errors_name_the_frame() {
        let mut bytes = encoded(&frames()[..1]);
        bytes.extend_from_slice(&[0, 0, 0, 0]);
        let mut reader = FrameReader::new();
        reader.push(&bytes);
        assert!(reader.next_frame().unwrap().is_ok());
        let error = reader.next_frame().unwrap().unwrap_err();
        assert!(error.to_string().starts_with("export stream frame 1:"));
    }
}
