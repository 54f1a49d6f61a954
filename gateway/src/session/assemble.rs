//! Reassembly of fragmented client messages, bounded by
//! `PGWS_MAX_MESSAGE_SIZE` across all fragments (fastwebsockets' own
//! collector has no such bound). UTF-8 is checked as fragments arrive, so
//! an invalid sequence closes the socket (1007) at the fragment that holds
//! it, not after the whole message was buffered.

use fastwebsockets::OpCode;

/// Why a message could not be assembled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssembleError {
    /// The message grew beyond the limit.
    TooLarge,
    /// A continuation without a start, or a new message inside another.
    BadFragment,
    /// The message is not UTF-8.
    NotUtf8,
}

/// Collects data frames into whole text messages.
pub struct Assembler {
    buffer: Vec<u8>,
    /// Bytes of `buffer` known to be valid UTF-8 (the rest is at most an
    /// incomplete character split across fragments).
    valid: usize,
    in_progress: bool,
    max: usize,
}

impl Assembler {
    /// An assembler for messages of at most `max` bytes.
    pub fn new(max: usize) -> Assembler {
        Assembler {
            buffer: Vec::new(),
            valid: 0,
            in_progress: false,
            max,
        }
    }

    /// How many more bytes the message being assembled may take.
    pub fn remaining(&self) -> usize {
        self.max.saturating_sub(self.buffer.len())
    }

    /// Feed one data frame; a complete message comes back as text.
    pub fn push(
        &mut self,
        opcode: OpCode,
        fin: bool,
        payload: &[u8],
    ) -> Result<Option<String>, AssembleError> {
        match (opcode, self.in_progress) {
            (OpCode::Text | OpCode::Binary, false) => {}
            (OpCode::Continuation, true) => {}
            _ => return Err(AssembleError::BadFragment),
        }
        if self.buffer.len() + payload.len() > self.max {
            self.reset();
            return Err(AssembleError::TooLarge);
        }
        if fin && !self.in_progress {
            // The common case: one frame, no copy into the buffer.
            return std::str::from_utf8(payload)
                .map(|s| Some(s.to_string()))
                .map_err(|_| AssembleError::NotUtf8);
        }
        self.buffer.extend_from_slice(payload);
        self.in_progress = !fin;
        self.check_utf8(fin)?;
        if !fin {
            return Ok(None);
        }
        let whole = std::mem::take(&mut self.buffer);
        self.valid = 0;
        String::from_utf8(whole)
            .map(Some)
            .map_err(|_| AssembleError::NotUtf8)
    }

    /// Validate what arrived since the last check. An incomplete character
    /// at the end is fine unless this is the last fragment.
    fn check_utf8(&mut self, fin: bool) -> Result<(), AssembleError> {
        match std::str::from_utf8(&self.buffer[self.valid..]) {
            Ok(_) => {
                self.valid = self.buffer.len();
                Ok(())
            }
            Err(e) if e.error_len().is_none() && !fin => {
                self.valid += e.valid_up_to();
                Ok(())
            }
            Err(_) => {
                self.reset();
                Err(AssembleError::NotUtf8)
            }
        }
    }

    fn reset(&mut self) {
        self.buffer = Vec::new();
        self.valid = 0;
        self.in_progress = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_frames_pass_through() {
        let mut a = Assembler::new(10);
        assert_eq!(a.push(OpCode::Text, true, b"hi"), Ok(Some("hi".into())));
        assert_eq!(a.push(OpCode::Binary, true, b"yo"), Ok(Some("yo".into())));
    }

    #[test]
    fn fragments_are_joined_and_bounded() {
        let mut a = Assembler::new(6);
        assert_eq!(a.push(OpCode::Text, false, b"abc"), Ok(None));
        assert_eq!(
            a.push(OpCode::Continuation, true, b"def"),
            Ok(Some("abcdef".into()))
        );
        assert_eq!(a.push(OpCode::Text, false, b"abcd"), Ok(None));
        assert_eq!(
            a.push(OpCode::Continuation, false, b"efg"),
            Err(AssembleError::TooLarge)
        );
    }

    #[test]
    fn protocol_violations_are_errors() {
        let mut a = Assembler::new(100);
        assert_eq!(
            a.push(OpCode::Continuation, true, b"x"),
            Err(AssembleError::BadFragment)
        );
        assert_eq!(a.push(OpCode::Text, false, b"x"), Ok(None));
        assert_eq!(
            a.push(OpCode::Text, true, b"y"),
            Err(AssembleError::BadFragment)
        );
        let mut a = Assembler::new(100);
        assert_eq!(
            a.push(OpCode::Binary, true, &[0xff, 0xfe]),
            Err(AssembleError::NotUtf8)
        );
    }

    #[test]
    fn invalid_utf8_is_caught_at_the_fragment_that_holds_it() {
        let mut a = Assembler::new(100);
        assert_eq!(a.push(OpCode::Text, false, b"ok"), Ok(None));
        assert_eq!(
            a.push(OpCode::Continuation, false, &[0xff]),
            Err(AssembleError::NotUtf8),
            "before FIN"
        );
        // A character split across fragments is fine.
        let mut a = Assembler::new(100);
        let euro = "€".as_bytes();
        assert_eq!(a.push(OpCode::Text, false, &euro[..1]), Ok(None));
        assert_eq!(a.push(OpCode::Continuation, false, &euro[1..2]), Ok(None));
        assert_eq!(
            a.push(OpCode::Continuation, true, &euro[2..]),
            Ok(Some("€".into()))
        );
        // ... but not at the end of the message.
        assert_eq!(a.push(OpCode::Text, false, b"a"), Ok(None));
        assert_eq!(
            a.push(OpCode::Continuation, true, &euro[..2]),
            Err(AssembleError::NotUtf8)
        );
    }

    #[test]
    fn the_budget_spans_fragments() {
        let mut a = Assembler::new(10);
        assert_eq!(a.remaining(), 10);
        assert_eq!(a.push(OpCode::Text, false, b"123456"), Ok(None));
        assert_eq!(a.remaining(), 4);
    }
}
