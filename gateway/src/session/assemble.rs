//! Reassembly of fragmented client messages, bounded by
//! `PGWS_MAX_MESSAGE_SIZE` across all fragments (fastwebsockets' own
//! collector has no such bound).

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
    in_progress: bool,
    max: usize,
}

impl Assembler {
    /// An assembler for messages of at most `max` bytes.
    pub fn new(max: usize) -> Assembler {
        Assembler {
            buffer: Vec::new(),
            in_progress: false,
            max,
        }
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
        if !fin {
            return Ok(None);
        }
        let whole = std::mem::take(&mut self.buffer);
        String::from_utf8(whole)
            .map(Some)
            .map_err(|_| AssembleError::NotUtf8)
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
}
