//! Messages on Redis pub/sub (`pgws2 <epoch> <seq> <at> <base> <term>
//! <session> <offset>[ <traceparent>]\n<payload>`, and `pgws1` without the
//! position): decoding anything, and the round trip. Properties: nothing
//! panics; what encode writes, decode gives back exactly.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pgws_protocol::position::{Continuity, Epoch, Position};
use pgws_protocol::republish::{self, Header};

fuzz_target!(|data: &[u8]| {
    let _ = republish::decode(Bytes::copy_from_slice(data));
    if data.len() < 57 {
        return;
    }
    let number = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&data[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let (epoch, seq, at) = (number(0), number(8), number(16));
    let position = (data[24] & 2 == 2).then(|| Position {
        epoch: Epoch {
            base: number(25),
            continuity: Continuity {
                term: number(33),
                session: number(41),
            },
        },
        offset: number(49),
    });
    let traceparent =
        (data[24] & 1 == 1).then_some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    let payload = &data[57..];
    let header = Header {
        epoch,
        seq,
        sent_at_us: at,
        traceparent,
    };
    let encoded = republish::encode(&header, position.as_ref(), payload);
    let decoded = republish::decode(Bytes::from(encoded)).expect("round trip");
    assert_eq!(
        (decoded.epoch, decoded.seq, decoded.sent_at_us),
        (epoch, seq, at)
    );
    assert_eq!(decoded.position, position);
    assert_eq!(decoded.traceparent.as_deref(), traceparent);
    assert_eq!(&decoded.payload[..], payload);
});
