//! One browser `RTCPeerConnection` to one remote peer, with Parlor's two
//! ordered data channels (`parlor-chat`, `parlor-file`). Exactly like the
//! CLI, the offerer creates them and the answerer receives them in-band
//! (`datachannel` event). Every callback becomes a [`PeerEvent`] for the
//! driver; the JS closures are stored in the [`PeerLink`] and detached and
//! dropped when it is, so nothing leaks.

use std::cell::RefCell;

use std::rc::Rc;

use parlor_protocol::{IceCandidate, IceServer};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast as _, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    MessageEvent, RtcConfiguration, RtcDataChannel, RtcDataChannelEvent, RtcDataChannelInit,
    RtcDataChannelState, RtcDataChannelType, RtcIceCandidateInit, RtcIceServer,
    RtcIceTransportPolicy, RtcOfferOptions, RtcPeerConnection, RtcPeerConnectionIceEvent,
    RtcSdpType, RtcSessionDescriptionInit,
};

use crate::util::{get, js_error};

pub use parlor_protocol::Channel;

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

/// The data channels of one link, as they become known, and their handlers.
#[derive(Default)]
struct Channels {
    chat: Option<RtcDataChannel>,
    file: Option<RtcDataChannel>,
    handlers: Vec<Handler>,
}

/// A connection to one remote peer.
pub struct PeerLink {
    pc: RtcPeerConnection,
    offerer: bool,
    channels: Rc<RefCell<Channels>>,
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

fn ice_config(ice_servers: &[IceServer], relay_only: bool) -> RtcConfiguration {
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
    if relay_only {
        config.set_ice_transport_policy(RtcIceTransportPolicy::Relay);
    }
    config
}

impl PeerLink {
    /// Creates the connection; events go to `sink`. The `offerer` creates
    /// both data channels, the answerer waits for them. `relay_only` limits
    /// ICE to TURN relay candidates (transport policy `relay`).
    pub fn new(
        ice_servers: &[IceServer],
        relay_only: bool,
        low_watermark: u64,
        offerer: bool,
        sink: Rc<dyn Fn(PeerEvent)>,
    ) -> Result<Self, String> {
        let pc = RtcPeerConnection::new_with_configuration(&ice_config(ice_servers, relay_only))
            .map_err(|e| js_error(&e))?;
        let mut handlers = Vec::new();

        let s = sink.clone();
        let on_candidate = Handler::new(move |e: JsValue| {
            let Some(e) = e.dyn_ref::<RtcPeerConnectionIceEvent>() else {
                return;
            };
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
            s(PeerEvent::State(
                get(&pc2, "connectionState").as_string().unwrap_or_default(),
            ));
        });
        pc.set_onconnectionstatechange(Some(on_state.as_ref().unchecked_ref()));
        handlers.push(on_state);

        let channels = Rc::new(RefCell::new(Channels::default()));
        let low = low_watermark.min(u64::from(u32::MAX)) as u32;
        if offerer {
            for kind in Channel::ALL {
                let init = RtcDataChannelInit::new();
                init.set_ordered(true);
                let dc = pc.create_data_channel_with_data_channel_dict(kind.label(), &init);
                wire_channel(&channels, dc, kind, low, &sink);
            }
        } else {
            let (chans, s) = (Rc::clone(&channels), sink);
            let on_channel = Handler::new(move |e: JsValue| {
                let Some(dc) = e.dyn_ref::<RtcDataChannelEvent>().map(|e| e.channel()) else {
                    return;
                };
                if let Some(kind) = Channel::from_label(&dc.label()) {
                    wire_channel(&chans, dc, kind, low, &s);
                }
            });
            pc.set_ondatachannel(Some(on_channel.as_ref().unchecked_ref()));
            handlers.push(on_channel);
        }

        Ok(Self {
            pc,
            offerer,
            channels,
            remote_description_set: false,
            early_candidates: Vec::new(),
            _handlers: handlers,
        })
    }

    /// The connection, for the async negotiation helpers below.
    pub fn pc(&self) -> RtcPeerConnection {
        self.pc.clone()
    }

    /// Whether this side made the original offer (and so makes ICE
    /// restart offers).
    pub fn offerer(&self) -> bool {
        self.offerer
    }

    /// A new remote description is coming (an ICE restart offer): hold
    /// remote candidates until [`Self::remote_description_ready`] again.
    pub fn renegotiating(&mut self) {
        self.remote_description_set = false;
    }

    /// Sends an encoded frame on `channel`.
    pub fn send(&self, channel: Channel, bytes: &[u8]) -> Result<(), String> {
        match self.channel(channel) {
            Some(dc) if dc.ready_state() == RtcDataChannelState::Open => {
                dc.send_with_u8_array(bytes).map_err(|e| js_error(&e))
            }
            _ => Err("data channel is not open".into()),
        }
    }

    /// Whether `channel` is open.
    pub fn is_open(&self, channel: Channel) -> bool {
        self.channel(channel)
            .is_some_and(|dc| dc.ready_state() == RtcDataChannelState::Open)
    }

    /// Bytes queued on `channel` and not yet sent.
    pub fn buffered_amount(&self, channel: Channel) -> u64 {
        self.channel(channel)
            .map_or(0, |dc| u64::from(dc.buffered_amount()))
    }

    fn channel(&self, channel: Channel) -> Option<RtcDataChannel> {
        let channels = self.channels.borrow();
        match channel {
            Channel::Chat => channels.chat.clone(),
            Channel::File => channels.file.clone(),
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
        let promise = self
            .pc
            .add_ice_candidate_with_opt_rtc_ice_candidate_init(Some(&init));
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
        self.pc.set_ondatachannel(None);
        let channels = self.channels.borrow();
        for dc in [&channels.chat, &channels.file].into_iter().flatten() {
            dc.set_onopen(None);
            dc.set_onclose(None);
            dc.set_onmessage(None);
            dc.set_onbufferedamountlow(None);
            dc.close();
        }
        self.pc.close();
    }
}

/// Wires `dc` (the link's `kind` channel) to `sink` and stores it with its
/// handlers in `channels`.
fn wire_channel(
    channels: &Rc<RefCell<Channels>>,
    dc: RtcDataChannel,
    kind: Channel,
    low_watermark: u32,
    sink: &Rc<dyn Fn(PeerEvent)>,
) {
    dc.set_binary_type(RtcDataChannelType::Arraybuffer);
    // An answerer's channel is usually open already when it is announced;
    // then no `open` event follows and Open is reported below, once.
    let already_open = dc.ready_state() == RtcDataChannelState::Open;
    let s = sink.clone();
    let on_open = Handler::new(move |_| s(PeerEvent::Open(kind)));
    if !already_open {
        dc.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    }
    let s = sink.clone();
    let on_close = Handler::new(move |_| s(PeerEvent::Closed(kind)));
    dc.set_onclose(Some(on_close.as_ref().unchecked_ref()));
    let s = sink.clone();
    let on_message = Handler::new(move |e: JsValue| {
        let Some(e) = e.dyn_ref::<MessageEvent>() else {
            return;
        };
        let data = e.data();
        if let Some(buf) = data.dyn_ref::<js_sys::ArrayBuffer>() {
            s(PeerEvent::Message(
                kind,
                js_sys::Uint8Array::new(buf).to_vec(),
            ));
        }
    });
    dc.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    let mut chans = channels.borrow_mut();
    chans.handlers.extend([on_open, on_close, on_message]);
    if kind == Channel::File {
        dc.set_buffered_amount_low_threshold(low_watermark);
        let s = sink.clone();
        let on_low = Handler::new(move |_| s(PeerEvent::BufferedLow));
        dc.set_onbufferedamountlow(Some(on_low.as_ref().unchecked_ref()));
        chans.handlers.push(on_low);
    }
    match kind {
        Channel::Chat => chans.chat = Some(dc),
        Channel::File => chans.file = Some(dc),
    }
    drop(chans);
    if already_open {
        sink(PeerEvent::Open(kind));
    }
}

async fn description(
    pc: &RtcPeerConnection,
    promise: js_sys::Promise,
    kind: RtcSdpType,
) -> Result<String, String> {
    let desc = JsFuture::from(promise).await.map_err(|e| js_error(&e))?;
    let sdp = get(&desc, "sdp")
        .as_string()
        .ok_or("no SDP in the description")?;
    let init = RtcSessionDescriptionInit::new(kind);
    init.set_sdp(&sdp);
    JsFuture::from(pc.set_local_description(&init))
        .await
        .map_err(|e| js_error(&e))?;
    Ok(sdp)
}

/// Makes an offer (with fresh ICE credentials when `ice_restart`) and sets
/// it as the local description.
pub async fn create_offer(pc: RtcPeerConnection, ice_restart: bool) -> Result<String, String> {
    let promise = if ice_restart {
        let options = RtcOfferOptions::new();
        options.set_ice_restart(true);
        pc.create_offer_with_rtc_offer_options(&options)
    } else {
        pc.create_offer()
    };
    description(&pc, promise, RtcSdpType::Offer).await
}

/// Applies a remote offer and returns the answer (set as local description).
pub async fn accept_offer(pc: RtcPeerConnection, sdp: String) -> Result<String, String> {
    let init = RtcSessionDescriptionInit::new(RtcSdpType::Offer);
    init.set_sdp(&sdp);
    JsFuture::from(pc.set_remote_description(&init))
        .await
        .map_err(|e| js_error(&e))?;
    description(&pc, pc.create_answer(), RtcSdpType::Answer).await
}

/// Applies a remote answer.
pub async fn accept_answer(pc: RtcPeerConnection, sdp: String) -> Result<(), String> {
    let init = RtcSessionDescriptionInit::new(RtcSdpType::Answer);
    init.set_sdp(&sdp);
    JsFuture::from(pc.set_remote_description(&init))
        .await
        .map_err(|e| js_error(&e))?;
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
    let rtt_ms = get(&pair, "currentRoundTripTime")
        .as_f64()
        .map(|s| s * 1000.0);
    Some(PathInfo { relayed, rtt_ms })
}
