//! Any bytes from a peer decode to a valid frame or an error, never a panic;
//! a decoded frame re-encodes within the size limit and decodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parlor_protocol::Frame;
use parlor_protocol::frame::MAX_FRAME_BYTES;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = Frame::decode(data) {
        let bytes = frame.encode();
        assert!(bytes.len() <= MAX_FRAME_BYTES);
        assert_eq!(Frame::decode(&bytes).ok(), Some(frame));
    }
});
