//! Client frames in: a websocket frame decoder that is cancel-safe and
//! whose buffer starts small.
//!
//! fastwebsockets' reader allocates an 8 KiB buffer per socket at the
//! handshake, and its `read_frame` keeps parsed state inside the future, so
//! it cannot sit in a `select!` beside writes. This decoder keeps every byte
//! it has read in its own buffer and parses only from there: dropping the
//! future of [`FrameReader::read_frame`] at any await loses nothing, which
//! lets one task per socket wait on inbound frames, its send queue and its
//! timers at once. The buffer is allocated on the first read
//! ([`READ_CHUNK`] bytes) and grows with the bytes that actually arrive —
//! at most doubling per read, never by what a header merely announces, so
//! 14 bytes claiming a 64 KiB frame cost 14 bytes, not 64 KiB — and is
//! released again after a frame larger than [`KEEP`]. An idle socket holds
//! half a kilobyte, not eight.
//!
//! Only what a server must enforce on client frames is checked here (RFC
//! 6455 §5): mask present, no reserved bits (no extensions are negotiated),
//! known opcodes, unfragmented control frames of at most 125 bytes, a
//! 64-bit length with its top bit clear, and the size limit — which the
//! caller gives per frame, so that it can subtract what earlier fragments
//! of the message already hold. A close frame's body is checked by
//! [`close_frame_error`]. Message reassembly and UTF-8 are
//! [`super::assemble`]'s.

use bytes::{Buf, BytesMut};
use fastwebsockets::OpCode;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The first allocation, and the least asked of each read.
pub const READ_CHUNK: usize = 512;
/// Buffer capacity kept once a frame has been consumed; more is released.
pub const KEEP: usize = 16 * 1024;

/// One frame from the client, unmasked.
#[derive(Debug)]
pub struct InFrame {
    /// Last frame of its message.
    pub fin: bool,
    /// What it is.
    pub opcode: OpCode,
    /// Its payload.
    pub payload: BytesMut,
}

/// Why no frame could be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A frame longer than the limit was announced.
    #[error("frame larger than the limit")]
    TooLarge,
    /// The client broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The connection ended.
    #[error("connection closed")]
    Eof,
    /// The connection failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Decodes client frames from a byte stream.
#[derive(Default)]
pub struct FrameReader {
    buf: BytesMut,
}

/// What the bytes buffered so far amount to.
enum Parsed {
    Frame(InFrame),
    /// The buffer must hold this many bytes before parsing can go on.
    Need(usize),
}

impl FrameReader {
    /// A reader with nothing buffered yet.
    pub fn new() -> FrameReader {
        FrameReader::default()
    }

    /// Bytes currently held for this socket.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The next frame; a data frame may carry at most `max_payload` bytes.
    /// Cancel-safe: bytes already read stay buffered.
    pub async fn read_frame<R>(
        &mut self,
        io: &mut R,
        max_payload: usize,
    ) -> Result<InFrame, FrameError>
    where
        R: AsyncRead + Unpin,
    {
        loop {
            let need = match self.parse(max_payload)? {
                Parsed::Frame(frame) => return Ok(frame),
                Parsed::Need(need) => need,
            };
            self.grow_towards(need);
            if io.read_buf(&mut self.buf).await? == 0 {
                return Err(FrameError::Eof);
            }
        }
    }

    /// Make room for the next read: at least [`READ_CHUNK`], towards `need`
    /// bytes, but never more than what has already arrived (the buffer at
    /// most doubles per read).
    fn grow_towards(&mut self, need: usize) {
        let missing = need.saturating_sub(self.buf.len());
        let step = missing.min(self.buf.len()).max(READ_CHUNK);
        if self.buf.capacity() - self.buf.len() < step {
            self.buf.reserve(step);
        }
    }

    fn parse(&mut self, max_payload: usize) -> Result<Parsed, FrameError> {
        let Some(&[b0, b1]) = self.buf.get(..2) else {
            return Ok(Parsed::Need(2));
        };
        if b0 & 0b0111_0000 != 0 {
            return Err(FrameError::Protocol("reserved bits set"));
        }
        let fin = b0 & 0b1000_0000 != 0;
        let opcode =
            OpCode::try_from(b0 & 0x0F).map_err(|_| FrameError::Protocol("unknown opcode"))?;
        if b1 & 0x80 == 0 {
            return Err(FrameError::Protocol("unmasked client frame"));
        }
        let control = matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong);
        let (extra, short) = match b1 & 0x7F {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(u64::from(n))),
        };
        let header = 2 + extra + 4;
        if self.buf.len() < header {
            return Ok(Parsed::Need(header));
        }
        let announced = match short {
            Some(n) => n,
            None if extra == 2 => u64::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
            None => {
                let mut be = [0u8; 8];
                be.copy_from_slice(&self.buf[2..10]);
                let n = u64::from_be_bytes(be);
                if n >> 63 != 0 {
                    return Err(FrameError::Protocol("64-bit length with its top bit set"));
                }
                n
            }
        };
        if control && (!fin || announced > 125) {
            return Err(FrameError::Protocol("bad control frame"));
        }
        let len = usize::try_from(announced).map_err(|_| FrameError::TooLarge)?;
        if len > max_payload && !control {
            return Err(FrameError::TooLarge);
        }
        if self.buf.len() < header + len {
            return Ok(Parsed::Need(header + len));
        }
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&self.buf[header - 4..header]);
        self.buf.advance(header);
        let mut payload = self.buf.split_to(len);
        fastwebsockets::unmask(&mut payload, mask);
        if self.buf.is_empty() && self.buf.capacity() > KEEP {
            // After a large frame, go back to small; the payload keeps its
            // part of the allocation until it is dropped.
            self.buf = BytesMut::new();
        }
        Ok(Parsed::Frame(InFrame {
            fin,
            opcode,
            payload,
        }))
    }
}

/// What is wrong with a client's close frame body, if anything (RFC 6455
/// §5.5.1, §7.4): none, or a 2-byte status code a peer may send, then a
/// UTF-8 reason.
pub fn close_frame_error(payload: &[u8]) -> Option<CloseProblem> {
    match payload {
        [] => None,
        [_] => Some(CloseProblem::Malformed),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            let allowed = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !allowed {
                Some(CloseProblem::Malformed)
            } else if std::str::from_utf8(reason).is_err() {
                Some(CloseProblem::NotUtf8)
            } else {
                None
            }
        }
    }
}

/// Why a close frame is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseProblem {
    /// One byte, or a status code a peer may not send (1002).
    Malformed,
    /// The reason is not UTF-8 (1007).
    NotUtf8,
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgws_testkit::raw::client_frame;

    async fn read_all(bytes: Vec<u8>, max: usize) -> Vec<Result<InFrame, FrameError>> {
        let mut reader = FrameReader::new();
        let mut io = bytes.as_slice();
        let mut out = Vec::new();
        loop {
            match reader.read_frame(&mut io, max).await {
                Err(FrameError::Eof) => return out,
                other => {
                    let stop = other.is_err();
                    out.push(other);
                    if stop {
                        return out;
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn decodes_and_unmasks_frames_of_every_length_form() {
        let big = vec![b'x'; 70_000];
        let mid = vec![b'y'; 300];
        let mut bytes = client_frame(true, 1, b"hello");
        bytes.extend(client_frame(false, 1, &mid));
        bytes.extend(client_frame(true, 0, &big));
        let frames = read_all(bytes, 100_000).await;
        let frames: Vec<InFrame> = frames.into_iter().map(|f| f.expect("frame")).collect();
        assert_eq!(frames.len(), 3);
        assert_eq!((frames[0].fin, frames[0].opcode), (true, OpCode::Text));
        assert_eq!(&frames[0].payload[..], b"hello");
        assert_eq!((frames[1].fin, frames[1].opcode), (false, OpCode::Text));
        assert_eq!(&frames[1].payload[..], &mid[..]);
        assert_eq!(frames[2].opcode, OpCode::Continuation);
        assert_eq!(&frames[2].payload[..], &big[..]);
    }

    #[tokio::test]
    async fn refuses_what_a_server_must_refuse() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![0x81, 0x05, b'h', b'e', b'l', b'l', b'o'], "unmasked"),
            (
                {
                    let mut f = client_frame(true, 1, b"x");
                    f[0] |= 0x40;
                    f
                },
                "reserved",
            ),
            (client_frame(true, 3, b"x"), "opcode"),
            (client_frame(false, 9, b"x"), "control"),
            (client_frame(true, 9, &[0u8; 126]), "control"),
        ];
        for (bytes, what) in cases {
            let frames = read_all(bytes, 1000).await;
            assert!(
                matches!(frames.last(), Some(Err(FrameError::Protocol(_)))),
                "{what}: {frames:?}"
            );
        }
        let frames = read_all(client_frame(true, 1, &[b'a'; 1001]), 1000).await;
        assert!(matches!(frames.last(), Some(Err(FrameError::TooLarge))));
    }

    #[tokio::test]
    async fn a_frame_split_across_reads_survives_a_dropped_future() {
        let bytes = client_frame(true, 2, &[7u8; 2000]);
        let (mut tx, mut rx) = tokio::io::duplex(64);
        let mut reader = FrameReader::new();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for chunk in bytes.chunks(100) {
                let _ = tx.write_all(chunk).await;
            }
        });
        // Cancel the read again and again while the frame trickles in.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let frame = loop {
            assert!(std::time::Instant::now() < deadline, "no frame within 10 s");
            let attempt = tokio::time::timeout(
                std::time::Duration::from_micros(50),
                reader.read_frame(&mut rx, 10_000),
            )
            .await;
            if let Ok(result) = attempt {
                break result.expect("frame");
            }
        };
        assert_eq!(frame.opcode, OpCode::Binary);
        assert_eq!(&frame.payload[..], &[7u8; 2000][..]);
    }

    #[tokio::test]
    async fn the_buffer_starts_small_and_shrinks_after_a_big_frame() {
        let mut reader = FrameReader::new();
        assert_eq!(reader.capacity(), 0);
        let mut small = client_frame(true, 1, b"hi");
        let mut io = small.as_slice();
        reader.read_frame(&mut io, 1 << 20).await.expect("small");
        assert!(reader.capacity() <= READ_CHUNK, "{}", reader.capacity());
        small.clear();
        let big = client_frame(true, 1, &vec![b'z'; 100_000]);
        let mut io = big.as_slice();
        let frame = reader.read_frame(&mut io, 1 << 20).await.expect("big");
        assert_eq!(frame.payload.len(), 100_000);
        assert!(reader.capacity() <= KEEP, "{}", reader.capacity());
    }

    #[tokio::test]
    async fn an_announced_length_reserves_nothing_until_bytes_arrive() {
        // 14 bytes announcing a 65,536-byte text frame, then silence.
        let header = [0x81, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 0x37, 0xfa, 0x21, 0x3d];
        let (mut tx, mut rx) = tokio::io::duplex(1 << 20);
        use tokio::io::AsyncWriteExt;
        tx.write_all(&header).await.expect("write");
        let mut reader = FrameReader::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            reader.read_frame(&mut rx, 1 << 20),
        )
        .await;
        assert!(read.is_err(), "no frame yet");
        assert!(
            reader.capacity() <= 2 * READ_CHUNK,
            "{} bytes held for a 14-byte header",
            reader.capacity()
        );
        // As the payload arrives, the buffer grows with it.
        tx.write_all(&[0u8; 4000]).await.expect("write");
        let read = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            reader.read_frame(&mut rx, 1 << 20),
        )
        .await;
        assert!(read.is_err(), "still incomplete");
        assert!(
            reader.capacity() <= 2 * 4014 + READ_CHUNK,
            "{} bytes held for 4,014 received",
            reader.capacity()
        );
    }

    #[tokio::test]
    async fn a_frame_over_the_remaining_budget_is_refused_from_its_header() {
        let frames = read_all(client_frame(true, 0, &[b'a'; 600]), 500).await;
        assert!(matches!(frames.last(), Some(Err(FrameError::TooLarge))));
        // Control frames are bounded by their own 125-byte rule instead.
        let frames = read_all(client_frame(true, 9, &[b'a'; 100]), 10).await;
        assert!(matches!(frames.last(), Some(Ok(_))));
    }

    #[tokio::test]
    async fn a_length_with_its_top_bit_set_is_a_protocol_error() {
        let mut bytes = vec![0x81, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 5];
        bytes.extend_from_slice(&[1, 2, 3, 4]);
        let frames = read_all(bytes, usize::MAX).await;
        assert!(
            matches!(frames.last(), Some(Err(FrameError::Protocol(_)))),
            "{frames:?}"
        );
    }

    #[test]
    fn close_bodies_are_checked() {
        assert_eq!(close_frame_error(b""), None);
        assert_eq!(close_frame_error(&[0x03, 0xE8]), None);
        assert_eq!(close_frame_error(&[0x0F, 0xA0, b'o', b'k']), None, "4000");
        assert_eq!(close_frame_error(&[0x03]), Some(CloseProblem::Malformed));
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            let body = code.to_be_bytes();
            assert_eq!(
                close_frame_error(&body),
                Some(CloseProblem::Malformed),
                "{code}"
            );
        }
        assert_eq!(
            close_frame_error(&[0x03, 0xE8, 0xff, 0xfe]),
            Some(CloseProblem::NotUtf8)
        );
    }
}
