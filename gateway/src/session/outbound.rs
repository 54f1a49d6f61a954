//! Server frames out: frames are encoded (with fastwebsockets' header
//! format) into one per-socket buffer and written with a single
//! `write_all`, so a burst of queued messages costs one system call, not one
//! per message.
//!
//! The buffer is empty until the first frame and is released after a burst
//! larger than [`KEEP`], so idle sockets hold nothing here.

use fastwebsockets::{Frame, OpCode, Payload};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Buffer capacity kept between bursts; more is released after writing.
pub const KEEP: usize = 16 * 1024;
/// A burst is written out once it holds this many bytes.
pub const FLUSH_AT: usize = 64 * 1024;
/// Longest websocket frame header a server writes (no mask).
const MAX_HEAD: usize = 10;

/// Frames waiting to be written to one socket.
#[derive(Default)]
pub struct FrameWriter {
    buf: Vec<u8>,
}

impl FrameWriter {
    /// Queue one unmasked frame.
    pub fn push(&mut self, fin: bool, opcode: OpCode, payload: &[u8]) {
        let mut frame = Frame::new(fin, opcode, None, Payload::Borrowed(payload));
        let mut head = [0u8; MAX_HEAD];
        let size = frame.fmt_head(&mut head);
        self.buf.reserve(size + payload.len());
        self.buf.extend_from_slice(&head[..size]);
        self.buf.extend_from_slice(payload);
    }

    /// Queue a text frame.
    pub fn text(&mut self, payload: &[u8]) {
        self.push(true, OpCode::Text, payload);
    }

    /// Queue a close frame with `code` and `reason`.
    pub fn close(&mut self, code: u16, reason: &[u8]) {
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(reason);
        self.push(true, OpCode::Close, &payload);
    }

    /// Make room for `total` bytes in all at once, so a burst that is
    /// known to come does not grow the buffer step by step (each step a
    /// copy, and a freed block left behind).
    pub fn reserve_total(&mut self, total: usize) {
        self.buf.reserve(total.saturating_sub(self.buf.len()));
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Write everything queued. Not cancel-safe: call it outside `select!`.
    pub async fn write_to<W>(&mut self, io: &mut W) -> std::io::Result<()>
    where
        W: AsyncWrite + Unpin,
    {
        if self.buf.is_empty() {
            return Ok(());
        }
        let result = async {
            io.write_all(&self.buf).await?;
            io.flush().await
        }
        .await;
        self.buf.clear();
        if self.buf.capacity() > KEEP {
            self.buf = Vec::new();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_of_a_burst_go_out_in_order_in_one_buffer() {
        let mut w = FrameWriter::default();
        w.text(b"one");
        w.text(&[b'x'; 300]);
        w.close(1000, b"");
        let mut out = Vec::new();
        w.write_to(&mut out).await.expect("write");
        let mut expected = vec![0x81, 3];
        expected.extend_from_slice(b"one");
        expected.extend_from_slice(&[0x81, 126, 1, 44]);
        expected.extend_from_slice(&[b'x'; 300]);
        expected.extend_from_slice(&[0x88, 2, 0x03, 0xE8]);
        assert_eq!(out, expected);
        assert_eq!(w.pending(), 0);
    }

    #[tokio::test]
    async fn a_big_burst_does_not_stay_allocated() {
        let mut w = FrameWriter::default();
        w.text(&vec![b'y'; 100_000]);
        let mut out = Vec::new();
        w.write_to(&mut out).await.expect("write");
        assert_eq!(out.len(), 100_000 + 10);
        assert!(w.buf.capacity() <= KEEP);
    }
}
