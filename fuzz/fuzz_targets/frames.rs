//! Client bytes after the upgrade: the frame decoder, the message
//! assembler and the close-frame check. The first byte picks the message
//! budget. Properties: nothing panics; a control frame is final and at
//! most 125 bytes; a data frame never exceeds what the budget has left;
//! every decoded frame, encoded again as a client would, decodes to the
//! same frame.
#![no_main]

use fastwebsockets::OpCode;
use futures_util::FutureExt;
use libfuzzer_sys::fuzz_target;
use pgws_gateway::session::fuzzing::{close_frame_error, Assembler, FrameReader};
use pgws_testkit::raw::client_frame;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, mut io)) = data.split_first() else {
        return;
    };
    let budget = match selector % 4 {
        0 => 0,
        1 => 125,
        2 => 4096,
        _ => 65_536,
    };
    let mut reader = FrameReader::new();
    let mut assembler = Assembler::new(budget);
    loop {
        let remaining = assembler.remaining();
        let Some(frame) = reader.read_frame(&mut io, remaining).now_or_never() else {
            panic!("a slice never makes the decoder wait");
        };
        let Ok(frame) = frame else { return };
        let control = matches!(frame.opcode, OpCode::Close | OpCode::Ping | OpCode::Pong);
        if control {
            assert!(frame.fin && frame.payload.len() <= 125);
            if frame.opcode == OpCode::Close {
                let _ = close_frame_error(&frame.payload);
            }
        } else {
            assert!(frame.payload.len() <= remaining, "over the budget");
        }
        let encoded = client_frame(frame.fin, frame.opcode as u8, &frame.payload);
        let again = FrameReader::new()
            .read_frame(&mut encoded.as_slice(), usize::MAX)
            .now_or_never()
            .expect("ready")
            .expect("a re-encoded frame decodes");
        assert_eq!((again.fin, again.opcode), (frame.fin, frame.opcode));
        assert_eq!(again.payload, frame.payload);
        if !control {
            match assembler.push(frame.opcode, frame.fin, &frame.payload) {
                Ok(Some(text)) => assert!(text.len() <= budget),
                Ok(None) => {}
                Err(_) => return,
            }
        }
    }
});
