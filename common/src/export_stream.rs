//! The framing of the catch-up stream (`GET /internal/export`): one JSON
//! [`ExportLine`] per line. The exporting counter writes lines with
//! [`encode_line`]; the importing counter cuts the bytes that arrive off the
//! network, in chunks of any size, back into lines with [`LineReader`].
//! Both live here, free of I/O, so that the `export_stream` fuzz target runs
//! the very code that decodes a peer's bytes.

use crate::api::ExportLine;

/// The longest line a reader waits for. One line is the items one
/// transaction added: at most a request's 100,000 items of two 256-byte
/// fields, about 56 MB of JSON. A peer sending more without a newline is
/// broken or hostile, and must not make the importer buffer without end.
pub const MAX_LINE_BYTES: usize = 128 * 1024 * 1024;

/// Appends `line` and its newline to `buf`.
pub fn encode_line(buf: &mut Vec<u8>, line: &ExportLine) {
    // A struct of strings and integers always serialises into a Vec.
    serde_json::to_writer(&mut *buf, line).expect("export lines always serialise");
    buf.push(b'\n');
}

/// Cuts a byte stream into newline-terminated lines and decodes each. A line
/// is decoded only once its newline has arrived, so how the network chunked
/// the stream never changes what comes out; bytes after the last newline
/// are an incomplete line (a cut stream) and never decoded.
#[derive(Debug, Default)]
pub struct LineReader {
    buf: Vec<u8>,
    /// Where the first line not yet returned starts.
    start: usize,
    /// `buf[start..scanned]` is known to hold no newline, so a long line
    /// that arrives in many chunks is scanned once, not once per chunk.
    scanned: usize,
}

impl LineReader {
    pub fn new() -> Self {
        LineReader::default()
    }

    /// Appends the next chunk of the stream.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete line, decoded; `None` until its newline arrives.
    pub fn next_line(&mut self) -> Option<Result<ExportLine, serde_json::Error>> {
        let Some(at) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') else {
            self.scanned = self.buf.len();
            return None;
        };
        let end = self.scanned + at;
        let line = serde_json::from_slice(&self.buf[self.start..end]);
        self.start = end + 1;
        self.scanned = self.start;
        Some(line)
    }

    /// Bytes received after the last complete line.
    pub fn incomplete(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Whether the line being received is already longer than
    /// [`MAX_LINE_BYTES`]: the stream should be abandoned.
    pub fn overlong(&self) -> bool {
        self.incomplete() > MAX_LINE_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ExportEntry;
    use crate::{CommitIndex, Item};

    fn lines() -> Vec<ExportLine> {
        vec![
            ExportLine::Entry(ExportEntry {
                index: CommitIndex(3),
                items: vec![Item::new("a", "t"), Item::new("b\n", "ü")],
            }),
            ExportLine::End {
                through: CommitIndex(4),
            },
        ]
    }

    fn read_all(reader: &mut LineReader) -> Vec<ExportLine> {
        std::iter::from_fn(|| reader.next_line())
            .map(|l| l.unwrap())
            .collect()
    }

    #[test]
    fn lines_survive_any_chunking() {
        let mut bytes = Vec::new();
        for line in lines() {
            encode_line(&mut bytes, &line);
        }
        for chunk in [1, 2, 7, bytes.len()] {
            let mut reader = LineReader::new();
            let mut got = Vec::new();
            for piece in bytes.chunks(chunk) {
                reader.push(piece);
                got.extend(read_all(&mut reader));
            }
            assert_eq!(got, lines(), "chunks of {chunk}");
            assert_eq!(reader.incomplete(), 0);
        }
    }

    #[test]
    fn an_endless_line_is_reported_not_buffered_forever() {
        let mut reader = LineReader::new();
        let chunk = vec![b'x'; 1024 * 1024];
        for _ in 0..MAX_LINE_BYTES / chunk.len() {
            reader.push(&chunk);
            assert!(reader.next_line().is_none());
        }
        assert!(!reader.overlong());
        reader.push(b"x");
        assert!(reader.next_line().is_none());
        assert!(reader.overlong());
    }

    #[test]
    fn a_cut_line_is_never_decoded() {
        let mut reader = LineReader::new();
        reader.push(b"{\"kind\":\"end\",\"through\":4}\n{\"kind\":\"end\",\"thr");
        assert_eq!(read_all(&mut reader).len(), 1);
        assert!(reader.next_line().is_none());
        assert_eq!(reader.incomplete(), 18);
    }

    #[test]
    fn a_bad_line_is_an_error_not_a_panic() {
        let mut reader = LineReader::new();
        reader.push(b"\n{\"kind\":\"entry\"}\n[]\n");
        for _ in 0..3 {
            assert!(reader.next_line().unwrap().is_err());
        }
        assert!(reader.next_line().is_none());
    }
}
