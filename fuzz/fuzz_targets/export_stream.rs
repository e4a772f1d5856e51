//! The catch-up stream a counter reads from a peer
//! (`tally_common::export_stream::LineReader`, called by
//! `counter/src/catchup.rs`). The first input byte picks a chunk size, the
//! rest is the stream. Checks: the lines that come out do not depend on how
//! the network cut the stream (whole, one byte at a time, or in chunks of
//! the chosen size), and the decoded lines, encoded again with the
//! exporter's `encode_line`, read back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_common::api::ExportLine;
use tally_common::export_stream::{encode_line, LineReader};

/// Lines in order up to the first bad one, as the importer reads them (it
/// gives up on a peer at the first line it cannot decode).
fn read(chunks: impl Iterator<Item = impl AsRef<[u8]>>) -> (Vec<ExportLine>, Option<String>) {
    let mut reader = LineReader::new();
    let mut lines = Vec::new();
    for chunk in chunks {
        reader.push(chunk.as_ref());
        while let Some(line) = reader.next_line() {
            match line {
                Ok(line) => lines.push(line),
                Err(e) => return (lines, Some(e.to_string())),
            }
        }
    }
    (lines, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&size, stream)) = data.split_first() else {
        return;
    };
    let whole = read(std::iter::once(stream));
    assert_eq!(read(stream.chunks(1)), whole, "byte by byte");
    let size = 1 + usize::from(size);
    assert_eq!(read(stream.chunks(size)), whole, "chunks of {size}");

    let mut encoded = Vec::new();
    for line in &whole.0 {
        encode_line(&mut encoded, line);
    }
    let again = read(std::iter::once(&encoded));
    assert_eq!(again, (whole.0, None), "encode_line output reads back");
});
