//! Any text a client or server might send is either a message or an error,
//! never a panic; whatever decodes re-encodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parlor_protocol::{ClientMessage, ServerMessage};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(msg) = ClientMessage::from_json(text) {
        assert_eq!(ClientMessage::from_json(&msg.to_json()).ok(), Some(msg));
    }
    if let Ok(msg) = ServerMessage::from_json(text) {
        assert_eq!(ServerMessage::from_json(&msg.to_json()).ok(), Some(msg));
    }
});
