//! A thin wrapper over one webrtc-rs `RTCPeerConnection` to one remote peer,
//! with Parlor's two pre-negotiated data channels (chat and file). Every
//! callback is turned into a [`PeerEvent`] on one bounded channel, so the
//! driver loop is the only place where state changes.

use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use parlor_core::room::LinkId;
use parlor_protocol::{IceCandidate, IceServer, PeerId};
use tokio::sync::mpsc;
use webrtc::api::API;
use webrtc::api::APIBuilder;
use webrtc::api::setting_engine::SettingEngine;
use webrtc::data_channel::RTCDataChannel;
use webrtc::data_channel::data_channel_init::RTCDataChannelInit;
use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
use webrtc::ice_transport::ice_candidate_type::RTCIceCandidateType;
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::offer_answer_options::RTCOfferOptions;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::policy::ice_transport_policy::RTCIceTransportPolicy;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;

pub use parlor_protocol::Channel;

/// Something that happened on a peer connection, tagged with the link
/// (connection) it happened on, so events of a closed link can be dropped.
#[derive(Debug)]
pub enum PeerEvent {
    /// A local ICE candidate to trickle to the peer.
    LocalCandidate {
        link: LinkId,
        candidate: IceCandidate,
    },
    /// A data channel opened.
    Open { link: LinkId, channel: Channel },
    /// A data channel closed.
    Closed { link: LinkId, channel: Channel },
    /// A message arrived.
    Message {
        link: LinkId,
        channel: Channel,
        data: Bytes,
    },
    /// The file channel's buffer drained to the low watermark.
    BufferedLow { link: LinkId },
    /// The connection's state changed.
    State {
        link: LinkId,
        state: RTCPeerConnectionState,
    },
}

impl PeerEvent {
    /// The link the event is about.
    pub fn link(&self) -> LinkId {
        match self {
            Self::LocalCandidate { link, .. }
            | Self::Open { link, .. }
            | Self::Closed { link, .. }
            | Self::Message { link, .. }
            | Self::BufferedLow { link }
            | Self::State { link, .. } => *link,
        }
    }
}

/// Whether `url` is one webrtc-rs 0.17 can gather candidates from: `stun:`
/// and UDP `turn:` URLs. It parses `turn:...?transport=tcp` and `turns:`
/// URLs but only logs "Unable to handle URL" for them (webrtc-ice 0.17
/// allocates relays over UDP only), so they are left out here; browsers use
/// them.
pub fn is_usable_ice_url(url: &str) -> bool {
    let (scheme, rest) = url.split_once(':').unwrap_or((url, ""));
    match scheme {
        "stun" => true,
        "turn" => match rest.split_once('?') {
            None => true,
            Some((_, query)) => query.eq_ignore_ascii_case("transport=udp"),
        },
        _ => false,
    }
}

/// Whether `servers` include a TURN URL this peer can use (with credentials).
pub fn has_usable_turn(servers: &[IceServer]) -> bool {
    servers.iter().any(|s| {
        s.username.is_some()
            && s.credential.is_some()
            && s.urls
                .iter()
                .any(|url| url.starts_with("turn:") && is_usable_ice_url(url))
    })
}

/// The servers as webrtc-rs wants them, without the URLs it cannot use.
fn rtc_ice_servers(servers: &[IceServer]) -> Vec<RTCIceServer> {
    servers
        .iter()
        .filter_map(|s| {
            let urls: Vec<String> = s
                .urls
                .iter()
                .filter(|url| is_usable_ice_url(url))
                .cloned()
                .collect();
            (!urls.is_empty()).then(|| RTCIceServer {
                urls,
                username: s.username.clone().unwrap_or_default(),
                credential: s.credential.clone().unwrap_or_default(),
            })
        })
        .collect()
}

/// Builds the webrtc-rs API object shared by every connection.
pub fn build_api() -> API {
    let mut settings = SettingEngine::default();
    // A link silent for 4 s is `disconnected`, for 8 s `failed` (webrtc-rs
    // defaults: 5 s and 25 s); the driver then restarts ICE or falls back to
    // the server relay, so a dead path is replaced within seconds.
    settings.set_ice_timeouts(
        Some(std::time::Duration::from_secs(4)),
        Some(std::time::Duration::from_secs(8)),
        Some(std::time::Duration::from_secs(1)),
    );
    // Loopback candidates let two peers on one machine connect even without
    // another interface; they only ever pair with a loopback candidate.
    settings.set_include_loopback_candidate(true);
    APIBuilder::new().with_setting_engine(settings).build()
}

/// What every link of a room is made with.
#[derive(Clone, Copy)]
pub struct LinkSetup<'a> {
    /// The webrtc-rs API object.
    pub api: &'a API,
    /// STUN/TURN servers from `welcome`.
    pub ice_servers: &'a [IceServer],
    /// The file channel's buffered-amount low watermark.
    pub low_watermark: usize,
    /// Only TURN relay candidates (`--force-relay turn`).
    pub relay_only: bool,
    /// Where the link's events go.
    pub events: &'a mpsc::Sender<PeerEvent>,
}

/// One WebRTC connection to one remote peer.
pub struct PeerLink {
    peer: PeerId,
    link: LinkId,
    pc: Arc<RTCPeerConnection>,
    channels: Arc<Mutex<Channels>>,
    remote_description_set: bool,
    early_candidates: Vec<RTCIceCandidateInit>,
}

impl std::fmt::Debug for PeerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerLink")
            .field("peer", &self.peer)
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

impl PeerLink {
    /// Creates the connection, wiring callbacks to `events`. The `offerer`
    /// creates both data channels; the answerer receives them in-band.
    /// `relay_only` restricts ICE to TURN relay candidates (`--force-relay turn`).
    pub async fn new(
        setup: &LinkSetup<'_>,
        peer: PeerId,
        link: LinkId,
        offerer: bool,
    ) -> Result<Self> {
        let LinkSetup {
            api,
            ice_servers,
            low_watermark,
            relay_only,
            events,
        } = *setup;
        let events = events.clone();
        let config = RTCConfiguration {
            ice_servers: rtc_ice_servers(ice_servers),
            ice_transport_policy: if relay_only {
                RTCIceTransportPolicy::Relay
            } else {
                RTCIceTransportPolicy::All
            },
            ..Default::default()
        };
        let pc = Arc::new(
            api.new_peer_connection(config)
                .await
                .context("creating peer connection")?,
        );

        let tx = events.clone();
        pc.on_ice_candidate(Box::new(move |candidate| {
            let tx = tx.clone();
            Box::pin(async move {
                let Some(candidate) = candidate else { return };
                match candidate.to_json() {
                    Ok(init) => {
                        let candidate = IceCandidate {
                            candidate: init.candidate,
                            sdp_mid: init.sdp_mid,
                            sdp_m_line_index: init.sdp_mline_index,
                            username_fragment: init.username_fragment,
                        };
                        let _ = tx.send(PeerEvent::LocalCandidate { link, candidate }).await;
                    }
                    Err(err) => tracing::debug!(%err, "unserialisable local candidate"),
                }
            })
        }));
        let tx = events.clone();
        pc.on_peer_connection_state_change(Box::new(move |state| {
            let tx = tx.clone();
            Box::pin(async move {
                let _ = tx.send(PeerEvent::State { link, state }).await;
            })
        }));

        // The offerer announces both channels in-band (DCEP) and the answerer
        // picks them up in `on_data_channel`. Pre-negotiated channels (same id
        // on both sides, no DCEP) lose the first message in webrtc-rs 0.17
        // when it arrives before the local side registered its channel: the
        // SCTP accept loop snapshots the known channels when it starts and
        // treats the stream as a new remote channel, dropping the message.
        let channels = Arc::new(Mutex::new(Channels::default()));
        if offerer {
            for kind in Channel::ALL {
                let init = RTCDataChannelInit {
                    ordered: Some(true),
                    ..Default::default()
                };
                let dc = pc
                    .create_data_channel(kind.label(), Some(init))
                    .await
                    .context("creating data channel")?;
                wire_channel(&channels, dc, link, kind, low_watermark, &events);
            }
        } else {
            let (chans, tx) = (Arc::clone(&channels), events);
            pc.on_data_channel(Box::new(move |dc: Arc<RTCDataChannel>| {
                // webrtc-rs calls this before it starts reading the channel,
                // so handlers set here miss no message.
                match Channel::from_label(dc.label()) {
                    Some(kind) => wire_channel(&chans, dc, link, kind, low_watermark, &tx),
                    None => tracing::debug!(label = dc.label(), "ignoring unknown data channel"),
                }
                Box::pin(async {})
            }));
        }

        Ok(Self {
            peer,
            link,
            pc,
            channels,
            remote_description_set: false,
            early_candidates: Vec::new(),
        })
    }

    /// The remote peer.
    pub fn peer(&self) -> &PeerId {
        &self.peer
    }

    /// Makes an offer and sets it as the local description; `ice_restart`
    /// asks for fresh ICE credentials and candidates on a live connection.
    pub async fn create_offer(&self, ice_restart: bool) -> Result<String> {
        let options = RTCOfferOptions {
            ice_restart,
            ..Default::default()
        };
        let offer = self
            .pc
            .create_offer(Some(options))
            .await
            .context("creating offer")?;
        let sdp = offer.sdp.clone();
        self.pc
            .set_local_description(offer)
            .await
            .context("setting local offer")?;
        Ok(sdp)
    }

    /// Applies a remote offer and returns the answer.
    pub async fn accept_offer(&mut self, sdp: String) -> Result<String> {
        let offer = RTCSessionDescription::offer(sdp).context("parsing remote offer")?;
        self.pc
            .set_remote_description(offer)
            .await
            .context("applying remote offer")?;
        self.remote_description_ready().await;
        let answer = self
            .pc
            .create_answer(None)
            .await
            .context("creating answer")?;
        let sdp = answer.sdp.clone();
        self.pc
            .set_local_description(answer)
            .await
            .context("setting local answer")?;
        Ok(sdp)
    }

    /// Applies a remote answer.
    pub async fn accept_answer(&mut self, sdp: String) -> Result<()> {
        let answer = RTCSessionDescription::answer(sdp).context("parsing remote answer")?;
        self.pc
            .set_remote_description(answer)
            .await
            .context("applying remote answer")?;
        self.remote_description_ready().await;
        Ok(())
    }

    async fn remote_description_ready(&mut self) {
        self.remote_description_set = true;
        for candidate in std::mem::take(&mut self.early_candidates) {
            self.apply_candidate(candidate).await;
        }
    }

    /// Adds a remote candidate (held until the remote description is set).
    pub async fn add_candidate(&mut self, candidate: IceCandidate) {
        let init = RTCIceCandidateInit {
            candidate: candidate.candidate,
            sdp_mid: candidate.sdp_mid,
            sdp_mline_index: candidate.sdp_m_line_index,
            username_fragment: candidate.username_fragment,
        };
        if self.remote_description_set {
            self.apply_candidate(init).await;
        } else if self.early_candidates.len() < MAX_EARLY_CANDIDATES {
            self.early_candidates.push(init);
        }
    }

    async fn apply_candidate(&self, init: RTCIceCandidateInit) {
        // Browsers may send `.local` (mDNS) candidates a native peer cannot
        // resolve; they are skipped and the other candidates carry the call.
        if let Err(err) = self.pc.add_ice_candidate(init).await {
            tracing::debug!(peer = %self.peer, %err, "ignoring unusable remote candidate");
        }
    }

    /// Sends one encoded frame on `channel`. webrtc-rs makes a send wait
    /// while its SCTP send queue (128 KiB) is full, which on a dead path is
    /// forever; after [`SEND_STALL`] the frame is given up (the caller's
    /// protocol recovers it: chat re-sends, transfers resume), so the driver
    /// never hangs on a dead link.
    pub async fn send(&self, channel: Channel, frame: Vec<u8>) -> Result<()> {
        let dc = self
            .channel(channel)
            .with_context(|| format!("the {} channel is not open yet", channel.label()))?;
        tokio::time::timeout(SEND_STALL, dc.send(&Bytes::from(frame)))
            .await
            .map_err(|_| anyhow::anyhow!("the {} channel is stalled", channel.label()))?
            .context("sending on data channel")?;
        Ok(())
    }

    /// Bytes queued on `channel` but not yet acknowledged by the peer
    /// (webrtc-rs counts bytes in flight until their SCTP SACK).
    pub async fn buffered_amount(&self, channel: Channel) -> u64 {
        match self.channel(channel) {
            Some(dc) => dc.buffered_amount().await as u64,
            None => 0,
        }
    }

    fn channel(&self, channel: Channel) -> Option<Arc<RTCDataChannel>> {
        let channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        match channel {
            Channel::Chat => channels.chat.clone(),
            Channel::File => channels.file.clone(),
        }
    }

    /// How the connection travels: `"turn"` when either end of the selected
    /// candidate pair is a relay candidate (a TURN allocation), `"direct"`
    /// otherwise.
    pub async fn path(&self) -> &'static str {
        let pair = self
            .pc
            .sctp()
            .transport()
            .ice_transport()
            .get_selected_candidate_pair()
            .await;
        match pair {
            Some(p)
                if p.local.typ == RTCIceCandidateType::Relay
                    || p.remote.typ == RTCIceCandidateType::Relay =>
            {
                "turn"
            }
            _ => "direct",
        }
    }

    /// The fingerprint, with `algorithm` (as in SDP, e.g. `sha-256`), of the
    /// DTLS certificate the remote end presented; `None` before the
    /// handshake or for an algorithm other than SHA-256.
    pub async fn remote_certificate_fingerprint(&self, algorithm: &str) -> Option<Vec<u8>> {
        use sha2::Digest as _;
        if algorithm != "sha-256" {
            return None;
        }
        let der = self.pc.sctp().transport().get_remote_certificate().await;
        (!der.is_empty()).then(|| sha2::Sha256::digest(&der).to_vec())
    }

    /// Closes the connection.
    pub async fn close(&self) {
        if let Err(err) = self.pc.close().await {
            tracing::debug!(peer = %self.peer, %err, "closing peer connection");
        }
    }
}

/// Longest a data-channel send may wait for room in webrtc-rs's send queue.
pub const SEND_STALL: std::time::Duration = std::time::Duration::from_secs(2);

/// Remote candidates held before the remote description arrives; a peer
/// sending more is misbehaving.
const MAX_EARLY_CANDIDATES: usize = 256;

/// The data channels of one link, as they become known.
#[derive(Default)]
struct Channels {
    chat: Option<Arc<RTCDataChannel>>,
    file: Option<Arc<RTCDataChannel>>,
}

/// Stores `dc` as the link's `kind` channel, then wires its callbacks to
/// `events` (stored first, so the driver can send as soon as it hears Open).
fn wire_channel(
    channels: &Arc<Mutex<Channels>>,
    dc: Arc<RTCDataChannel>,
    link: LinkId,
    kind: Channel,
    low_watermark: usize,
    events: &mpsc::Sender<PeerEvent>,
) {
    {
        let mut slots = channels.lock().unwrap_or_else(|e| e.into_inner());
        match kind {
            Channel::Chat => slots.chat = Some(Arc::clone(&dc)),
            Channel::File => slots.file = Some(Arc::clone(&dc)),
        }
    }
    let (tx, weak) = (events.clone(), Arc::downgrade(&dc));
    dc.on_open(Box::new(move || {
        Box::pin(async move {
            // The low-watermark callback is attached once open: webrtc-rs
            // drops one registered earlier on channels it accepted.
            if kind == Channel::File
                && let Some(dc) = weak.upgrade()
            {
                dc.set_buffered_amount_low_threshold(low_watermark).await;
                let tx = tx.clone();
                dc.on_buffered_amount_low(Box::new(move || {
                    let tx = tx.clone();
                    Box::pin(async move {
                        let _ = tx.send(PeerEvent::BufferedLow { link }).await;
                    })
                }))
                .await;
            }
            let _ = tx
                .send(PeerEvent::Open {
                    link,
                    channel: kind,
                })
                .await;
        })
    }));
    let tx = events.clone();
    dc.on_close(Box::new(move || {
        let tx = tx.clone();
        Box::pin(async move {
            let _ = tx
                .send(PeerEvent::Closed {
                    link,
                    channel: kind,
                })
                .await;
        })
    }));
    let tx = events.clone();
    dc.on_message(Box::new(move |msg| {
        let tx = tx.clone();
        // Awaiting the bounded channel here pauses the SCTP reader while the
        // driver is busy, which is the backpressure we want.
        Box::pin(async move {
            let _ = tx
                .send(PeerEvent::Message {
                    link,
                    channel: kind,
                    data: msg.data,
                })
                .await;
        })
    }));
}
