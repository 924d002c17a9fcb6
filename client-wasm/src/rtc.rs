//! One browser `RTCPeerConnection` to one remote peer, with Parlor's two
//! pre-negotiated data channels (`parlor-chat` id 0, `parlor-file` id 1,
//! ordered, `negotiated: true`, created before the offer/answer on both
//! sides, exactly like the CLI). Every callback becomes a [`PeerEvent`] for
//! the driver; the JS closures are stored in the [`PeerLink`] and detached
//! and dropped when it is, so nothing leaks.

use std::rc::Rc;

use parlor_protocol::{
    CHAT_CHANNEL_ID, CHAT_CHANNEL_LABEL, FILE_CHANNEL_ID, FILE_CHANNEL_LABEL, IceCandidate, IceServer,
};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast as _, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    MessageEvent, RtcConfiguration, RtcDataChannel, RtcDataChannelInit, RtcDataChannelState, RtcDataChannelType,
    RtcIceCandidateInit, RtcIceServer, RtcPeerConnection, RtcPeerConnectionIceEvent, RtcSdpType,
    RtcSessionDescriptionInit,
};

use crate::util::{get, js_error};

/// Which of the two data channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Chat frames and acks.
    Chat,
    /// File frames (offers, chunks, progress…).
    File,
}

/// Something that happened on a peer connection.
#[derive(Debug)]
pub enum PeerEvent {
    /// A local ICE candidate to trickle to the peer.
    LocalCandidate(IceCandidate),
    /// A data channel opened.
    Open(Channel),
    /// A data channel closed.
    Closed(Channel),
    /// A binary message arrived.
    Message(Channel, Vec<u8>),
    /// The file channel drained to its low threshold.
    BufferedLow,
    /// `connectionState` changed (`"new"`, `"connecting"`, `"connected"`,
    /// `"disconnected"`, `"failed"`, `"closed"`).
    State(String),
}

type Handler = Closure<dyn FnMut(JsValue)>;

/// Remote candidates held before the remote description is set; a peer that
/// sends more is misbehaving (same bound as the CLI).
const MAX_EARLY_CANDIDATES: usize = 256;

/// A connection to one remote peer.
pub struct PeerLink {
    pc: RtcPeerConnection,
    chat: RtcDataChannel,
    file: RtcDataChannel,
    remote_description_set: bool,
    early_candidates: Vec<RtcIceCandidateInit>,
    _handlers: Vec<Handler>,
}

impl std::fmt::Debug for PeerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerLink").finish_non_exhaustive()
    }
}

/// Whether this browser has WebRTC at all.
pub fn supported() -> bool {
    crate::util::has_global("RTCPeerConnection")
}

fn ice_config(ice_servers: &[IceServer]) -> RtcConfiguration {
    let servers = js_sys::Array::new();
    for s in ice_servers {
        let server = RtcIceServer::new();
        let urls: js_sys::Array = s.urls.iter().map(|u| JsValue::from_str(u)).collect();
        server.set_urls(&urls);
        if let Some(u) = &s.username {
            server.set_username(u);
        }
        if let Some(c) = &s.credential {
            server.set_credential(c);
        }
        servers.push(&server);
    }
    let config = RtcConfiguration::new();
    config.set_ice_servers(&servers);
    config
}

impl PeerLink {
    /// Creates the connection and both data channels; events go to `sink`.
    pub fn new(
        ice_servers: &[IceServer],
        low_watermark: u64,
        sink: Rc<dyn Fn(PeerEvent)>,
    ) -> Result<Self, String> {
        let pc = RtcPeerConnection::new_with_configuration(&ice_config(ice_servers)).map_err(|e| js_error(&e))?;
        let mut handlers = Vec::new();

        let s = sink.clone();
        let on_candidate = Handler::new(move |e: JsValue| {
            let Some(e) = e.dyn_ref::<RtcPeerConnectionIceEvent>() else { return };
            let Some(c) = e.candidate() else { return };
            let candidate = c.candidate();
            if candidate.is_empty() {
                return; // end-of-candidates marker
            }
            s(PeerEvent::LocalCandidate(IceCandidate {
                candidate,
                sdp_mid: c.sdp_mid(),
                sdp_m_line_index: c.sdp_m_line_index(),
                username_fragment: get(&c, "usernameFragment").as_string(),
            }));
        });
        pc.set_onicecandidate(Some(on_candidate.as_ref().unchecked_ref()));
        handlers.push(on_candidate);

        let s = sink.clone();
        let pc2 = pc.clone();
        let on_state = Handler::new(move |_| {
            s(PeerEvent::State(get(&pc2, "connectionState").as_string().unwrap_or_default()));
        });
        pc.set_onconnectionstatechange(Some(on_state.as_ref().unchecked_ref()));
        handlers.push(on_state);

        let chat = open_channel(&pc, Channel::Chat, &sink, &mut handlers);
        let file = open_channel(&pc, Channel::File, &sink, &mut handlers);
        file.set_buffered_amount_low_threshold(low_watermark.min(u64::from(u32::MAX)) as u32);
        let s = sink;
        let on_low = Handler::new(move |_| s(PeerEvent::BufferedLow));
        file.set_onbufferedamountlow(Some(on_low.as_ref().unchecked_ref()));
        handlers.push(on_low);

        Ok(Self { pc, chat, file, remote_description_set: false, early_candidates: Vec::new(), _handlers: handlers })
    }

    /// The connection, for the async negotiation helpers below.
    pub fn pc(&self) -> RtcPeerConnection {
        self.pc.clone()
    }

    /// Sends an encoded frame on `channel`.
    pub fn send(&self, channel: Channel, bytes: &[u8]) -> Result<(), String> {
        let dc = self.channel(channel);
        if dc.ready_state() != RtcDataChannelState::Open {
            return Err("data channel is not open".into());
        }
        dc.send_with_u8_array(bytes).map_err(|e| js_error(&e))
    }

    /// Whether `channel` is open.
    pub fn is_open(&self, channel: Channel) -> bool {
        self.channel(channel).ready_state() == RtcDataChannelState::Open
    }

    /// Bytes queued on `channel` and not yet sent.
    pub fn buffered_amount(&self, channel: Channel) -> u64 {
        u64::from(self.channel(channel).buffered_amount())
    }

    fn channel(&self, channel: Channel) -> &RtcDataChannel {
        match channel {
            Channel::Chat => &self.chat,
            Channel::File => &self.file,
        }
    }

    /// Adds a remote candidate, or holds it until the remote description is set.
    pub fn add_candidate(&mut self, candidate: IceCandidate) {
        let init = RtcIceCandidateInit::new(&candidate.candidate);
        init.set_sdp_mid(candidate.sdp_mid.as_deref());
        init.set_sdp_m_line_index(candidate.sdp_m_line_index);
        if let Some(ufrag) = &candidate.username_fragment {
            crate::util::set(&init, "usernameFragment", &JsValue::from_str(ufrag));
        }
        if self.remote_description_set {
            self.apply_candidate(init);
        } else if self.early_candidates.len() < MAX_EARLY_CANDIDATES {
            self.early_candidates.push(init);
        }
    }

    /// The remote description is set: apply the held candidates.
    pub fn remote_description_ready(&mut self) {
        self.remote_description_set = true;
        for init in std::mem::take(&mut self.early_candidates) {
            self.apply_candidate(init);
        }
    }

    fn apply_candidate(&self, init: RtcIceCandidateInit) {
        let promise = self.pc.add_ice_candidate_with_opt_rtc_ice_candidate_init(Some(&init));
        wasm_bindgen_futures::spawn_local(async move {
            // Unusable candidates (e.g. unresolvable mDNS names) are skipped;
            // the others carry the connection.
            if let Err(e) = JsFuture::from(promise).await {
                crate::util::warn(&format!("ignoring remote candidate: {}", js_error(&e)));
            }
        });
    }
}

impl Drop for PeerLink {
    fn drop(&mut self) {
        self.pc.set_onicecandidate(None);
        self.pc.set_onconnectionstatechange(None);
        for dc in [&self.chat, &self.file] {
            dc.set_onopen(None);
            dc.set_onclose(None);
            dc.set_onmessage(None);
            dc.set_onbufferedamountlow(None);
            dc.close();
        }
        self.pc.close();
    }
}

fn open_channel(
    pc: &RtcPeerConnection,
    channel: Channel,
    sink: &Rc<dyn Fn(PeerEvent)>,
    handlers: &mut Vec<Handler>,
) -> RtcDataChannel {
    let (label, id) = match channel {
        Channel::Chat => (CHAT_CHANNEL_LABEL, CHAT_CHANNEL_ID),
        Channel::File => (FILE_CHANNEL_LABEL, FILE_CHANNEL_ID),
    };
    let init = RtcDataChannelInit::new();
    init.set_negotiated(true);
    init.set_id(id);
    init.set_ordered(true);
    let dc = pc.create_data_channel_with_data_channel_dict(label, &init);
    dc.set_binary_type(RtcDataChannelType::Arraybuffer);
    let s = sink.clone();
    let on_open = Handler::new(move |_| s(PeerEvent::Open(channel)));
    dc.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    let s = sink.clone();
    let on_close = Handler::new(move |_| s(PeerEvent::Closed(channel)));
    dc.set_onclose(Some(on_close.as_ref().unchecked_ref()));
    let s = sink.clone();
    let on_message = Handler::new(move |e: JsValue| {
        let Some(e) = e.dyn_ref::<MessageEvent>() else { return };
        let data = e.data();
        if let Some(buf) = data.dyn_ref::<js_sys::ArrayBuffer>() {
            s(PeerEvent::Message(channel, js_sys::Uint8Array::new(buf).to_vec()));
        }
    });
    dc.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    handlers.extend([on_open, on_close, on_message]);
    dc
}

async fn description(pc: &RtcPeerConnection, promise: js_sys::Promise, kind: RtcSdpType) -> Result<String, String> {
    let desc = JsFuture::from(promise).await.map_err(|e| js_error(&e))?;
    let sdp = get(&desc, "sdp").as_string().ok_or("no SDP in the description")?;
    let init = RtcSessionDescriptionInit::new(kind);
    init.set_sdp(&sdp);
    JsFuture::from(pc.set_local_description(&init)).await.map_err(|e| js_error(&e))?;
    Ok(sdp)
}

/// Makes an offer and sets it as the local description.
pub async fn create_offer(pc: RtcPeerConnection) -> Result<String, String> {
    description(&pc, pc.create_offer(), RtcSdpType::Offer).await
}

/// Applies a remote offer and returns the answer (set as local description).
pub async fn accept_offer(pc: RtcPeerConnection, sdp: String) -> Result<String, String> {
    let init = RtcSessionDescriptionInit::new(RtcSdpType::Offer);
    init.set_sdp(&sdp);
    JsFuture::from(pc.set_remote_description(&init)).await.map_err(|e| js_error(&e))?;
    description(&pc, pc.create_answer(), RtcSdpType::Answer).await
}

/// Applies a remote answer.
pub async fn accept_answer(pc: RtcPeerConnection, sdp: String) -> Result<(), String> {
    let init = RtcSessionDescriptionInit::new(RtcSdpType::Answer);
    init.set_sdp(&sdp);
    JsFuture::from(pc.set_remote_description(&init)).await.map_err(|e| js_error(&e))?;
    Ok(())
}

/// How the connection travels, from `getStats()`: whether the selected
/// candidate pair goes through a TURN relay, and its current RTT in ms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathInfo {
    /// Either end of the selected pair is a relay candidate.
    pub relayed: bool,
    /// `currentRoundTripTime` of the pair, in milliseconds.
    pub rtt_ms: Option<f64>,
}

/// Looks up the selected candidate pair; `None` when there is none yet.
pub async fn path_info(pc: RtcPeerConnection) -> Option<PathInfo> {
    let report = JsFuture::from(pc.get_stats()).await.ok()?;
    let map: js_sys::Map = report.unchecked_into();
    let mut selected: Option<JsValue> = None;
    let mut fallback: Option<JsValue> = None;
    map.for_each(&mut |value, _key| {
        let kind = get(&value, "type").as_string().unwrap_or_default();
        if kind == "transport" {
            if let Some(id) = get(&value, "selectedCandidatePairId").as_string() {
                let pair = map.get(&JsValue::from_str(&id));
                if !pair.is_undefined() {
                    selected = Some(pair);
                }
            }
        } else if kind == "candidate-pair"
            && (get(&value, "selected").as_bool() == Some(true)
                || (get(&value, "nominated").as_bool() == Some(true)
                    && get(&value, "state").as_string().as_deref() == Some("succeeded")))
        {
            fallback = Some(value);
        }
    });
    let pair = selected.or(fallback)?;
    let is_relay = |key: &str| {
        get(&pair, key)
            .as_string()
            .map(|id| map.get(&JsValue::from_str(&id)))
            .and_then(|c| get(&c, "candidateType").as_string())
            .is_some_and(|t| t == "relay")
    };
    let relayed = is_relay("localCandidateId") || is_relay("remoteCandidateId");
    let rtt_ms = get(&pair, "currentRoundTripTime").as_f64().map(|s| s * 1000.0);
    Some(PathInfo { relayed, rtt_ms })
}
