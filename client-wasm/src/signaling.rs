//! The signaling connection: a WebSocket to `parlor-server`'s `/ws`, JSON
//! messages in and out as text, and server-relay packets
//! ([`parlor_protocol::relay`]) as binary messages. The closures the socket
//! calls are stored in the [`Signaling`] value and detached and dropped with
//! it (no `forget()`).

use parlor_protocol::{ClientMessage, ServerMessage};
use wasm_bindgen::JsCast as _;
use wasm_bindgen::closure::Closure;
use web_sys::{BinaryType, CloseEvent, Event, MessageEvent, WebSocket};

/// Something that happened on the signaling socket.
#[derive(Debug)]
pub enum SignalEvent {
    /// The socket is open; send `hello` now.
    Open,
    /// A message from the server.
    Message(ServerMessage),
    /// A binary message: a server-relay envelope from another peer.
    Relay(Vec<u8>),
    /// The server sent something this build cannot read.
    Unreadable(String),
    /// The socket closed (or never opened).
    Closed {
        /// WebSocket close code (1006 when the connection failed).
        code: u16,
        /// Close reason sent by the server, if any.
        reason: String,
    },
}

/// An open (or opening) signaling WebSocket.
pub struct Signaling {
    ws: WebSocket,
    _on_open: Closure<dyn FnMut(Event)>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_close: Closure<dyn FnMut(CloseEvent)>,
}

impl std::fmt::Debug for Signaling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signaling")
            .field("url", &self.ws.url())
            .finish_non_exhaustive()
    }
}

/// The signaling URL of the page's own server: `ws(s)://HOST/ws`.
pub fn websocket_url() -> Option<String> {
    let location = web_sys::window()?.location();
    let origin = location.origin().ok()?;
    Some(parlor_protocol::ids::websocket_url(&origin))
}

impl Signaling {
    /// Opens the socket; every event goes to `sink`.
    pub fn connect(url: &str, sink: impl Fn(SignalEvent) + 'static) -> Result<Self, String> {
        let ws = WebSocket::new(url).map_err(|e| crate::util::js_error(&e))?;
        ws.set_binary_type(BinaryType::Arraybuffer);
        let sink = std::rc::Rc::new(sink);
        let s = sink.clone();
        let on_open = Closure::<dyn FnMut(Event)>::new(move |_| s(SignalEvent::Open));
        let s = sink.clone();
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
            let data = e.data();
            if let Some(buf) = data.dyn_ref::<js_sys::ArrayBuffer>() {
                return s(SignalEvent::Relay(js_sys::Uint8Array::new(buf).to_vec()));
            }
            let Some(text) = data.as_string() else {
                return s(SignalEvent::Unreadable(
                    "a message neither text nor binary".into(),
                ));
            };
            match ServerMessage::from_json(&text) {
                Ok(msg) => s(SignalEvent::Message(msg)),
                Err(err) => s(SignalEvent::Unreadable(err.to_string())),
            }
        });
        let s = sink;
        let on_close = Closure::<dyn FnMut(CloseEvent)>::new(move |e: CloseEvent| {
            s(SignalEvent::Closed {
                code: e.code(),
                reason: e.reason(),
            })
        });
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        Ok(Self {
            ws,
            _on_open: on_open,
            _on_message: on_message,
            _on_close: on_close,
        })
    }

    /// Sends a message; `false` when the socket is not open.
    pub fn send(&self, msg: &ClientMessage) -> bool {
        self.ws.ready_state() == WebSocket::OPEN && self.ws.send_with_str(&msg.to_json()).is_ok()
    }

    /// Whether the socket is open.
    pub fn is_open(&self) -> bool {
        self.ws.ready_state() == WebSocket::OPEN
    }

    /// Sends a server-relay envelope as one binary message.
    pub fn send_binary(&self, bytes: &[u8]) -> Result<(), String> {
        if self.ws.ready_state() != WebSocket::OPEN {
            return Err("the connection to the server is down".into());
        }
        self.ws
            .send_with_u8_array(bytes)
            .map_err(|e| crate::util::js_error(&e))
    }

    /// Bytes queued on the socket and not yet sent (the relay's flow
    /// control; the socket has no low-water event, so the driver polls it).
    pub fn buffered_amount(&self) -> u64 {
        u64::from(self.ws.buffered_amount())
    }
}

impl Drop for Signaling {
    fn drop(&mut self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        let _ = self.ws.close();
    }
}
