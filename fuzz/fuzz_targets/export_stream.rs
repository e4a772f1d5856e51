//! The catch-up stream a counter reads from a peer
//! (`tally_common::export_stream::FrameReader`, called by
//! `counter/src/catchup.rs`). The first input byte picks a chunk size, the
//! rest is the stream. Checks: the frames that come out do not depend on
//! how the network cut the stream (whole, one byte at a time, or in chunks
//! of the chosen size), and the decoded frames, encoded again with the
//! exporter's `encode_frame`, read back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_common::api::ExportFrame;
use tally_common::export_stream::{encode_frame, FrameReader};

/// Frames in order up to the first bad one, as the importer reads them (it
/// gives up on a peer at the first frame it cannot decode).
fn read(chunks: impl Iterator<Item = impl AsRef<[u8]>>) -> (Vec<ExportFrame>, Option<String>) {
    let mut reader = FrameReader::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        reader.push(chunk.as_ref());
        while let Some(frame) = reader.next_frame() {
            match frame {
                Ok(frame) => frames.push(frame),
                Err(e) => return (frames, Some(e.to_string())),
            }
        }
    }
    (frames, None)
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
    for frame in &whole.0 {
        encode_frame(&mut encoded, frame);
    }
    let again = read(std::iter::once(&encoded));
    assert_eq!(again, (whole.0, None), "encode_frame output reads back");
});
