//! A thin wrapper over one webrtc-rs `RTCPeerConnection` to one remote peer,
//! with Parlor's two pre-negotiated data channels (chat and file). Every
//! callback is turned into a [`PeerEvent`] on one bounded channel, so the
//! driver loop is the only place where state changes.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use parlor_protocol::{
    CHAT_CHANNEL_ID, CHAT_CHANNEL_LABEL, FILE_CHANNEL_ID, FILE_CHANNEL_LABEL, IceCandidate,
    IceServer, PeerId,
};
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
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;

/// Which of the two data channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Chat frames: small, latency-sensitive.
    Chat,
    /// File frames: bulk, flow-controlled.
    File,
}

/// Something that happened on a peer connection.
#[derive(Debug)]
pub enum PeerEvent {
    /// A local ICE candidate to trickle to the peer.
    LocalCandidate {
        peer: PeerId,
        candidate: IceCandidate,
    },
    /// A data channel opened.
    Open { peer: PeerId, channel: Channel },
    /// A data channel closed.
    Closed { peer: PeerId, channel: Channel },
    /// A message arrived.
    Message {
        peer: PeerId,
        channel: Channel,
        data: Bytes,
    },
    /// The file channel's buffer drained to the low watermark.
    BufferedLow { peer: PeerId },
    /// The connection's state changed.
    State {
        peer: PeerId,
        state: RTCPeerConnectionState,
    },
}

/// Builds the webrtc-rs API object shared by every connection.
pub fn build_api() -> API {
    let mut settings = SettingEngine::default();
    // Loopback candidates let two peers on one machine connect even without
    // another interface; they only ever pair with a loopback candidate.
    settings.set_include_loopback_candidate(true);
    APIBuilder::new().with_setting_engine(settings).build()
}

/// One WebRTC connection to one remote peer.
pub struct PeerLink {
    peer: PeerId,
    pc: Arc<RTCPeerConnection>,
    chat: Arc<RTCDataChannel>,
    file: Arc<RTCDataChannel>,
    remote_description_set: bool,
    early_candidates: Vec<RTCIceCandidateInit>,
}

impl std::fmt::Debug for PeerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerLink")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl PeerLink {
    /// Creates the connection and both data channels, wiring callbacks to `events`.
    pub async fn new(
        api: &API,
        peer: PeerId,
        ice_servers: &[IceServer],
        low_watermark: usize,
        events: mpsc::Sender<PeerEvent>,
    ) -> Result<Self> {
        let config = RTCConfiguration {
            ice_servers: ice_servers
                .iter()
                .map(|s| RTCIceServer {
                    urls: s.urls.clone(),
                    username: s.username.clone().unwrap_or_default(),
                    credential: s.credential.clone().unwrap_or_default(),
                })
                .collect(),
            ..Default::default()
        };
        let pc = Arc::new(
            api.new_peer_connection(config)
                .await
                .context("creating peer connection")?,
        );

        let tx = events.clone();
        let id = peer.clone();
        pc.on_ice_candidate(Box::new(move |candidate| {
            let tx = tx.clone();
            let peer = id.clone();
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
                        let _ = tx.send(PeerEvent::LocalCandidate { peer, candidate }).await;
                    }
                    Err(err) => tracing::debug!(%err, "unserialisable local candidate"),
                }
            })
        }));
        let tx = events.clone();
        let id = peer.clone();
        pc.on_peer_connection_state_change(Box::new(move |state| {
            let tx = tx.clone();
            let peer = id.clone();
            Box::pin(async move {
                let _ = tx.send(PeerEvent::State { peer, state }).await;
            })
        }));

        let chat = open_channel(&pc, &peer, Channel::Chat, &events).await?;
        let file = open_channel(&pc, &peer, Channel::File, &events).await?;
        file.set_buffered_amount_low_threshold(low_watermark).await;
        let tx = events;
        let id = peer.clone();
        file.on_buffered_amount_low(Box::new(move || {
            let tx = tx.clone();
            let peer = id.clone();
            Box::pin(async move {
                let _ = tx.send(PeerEvent::BufferedLow { peer }).await;
            })
        }))
        .await;

        Ok(Self {
            peer,
            pc,
            chat,
            file,
            remote_description_set: false,
            early_candidates: Vec::new(),
        })
    }

    /// Makes an offer and sets it as the local description.
    pub async fn create_offer(&self) -> Result<String> {
        let offer = self.pc.create_offer(None).await.context("creating offer")?;
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

    /// Sends one encoded frame on `channel`.
    pub async fn send(&self, channel: Channel, frame: Vec<u8>) -> Result<()> {
        self.channel(channel)
            .send(&Bytes::from(frame))
            .await
            .context("sending on data channel")?;
        Ok(())
    }

    /// Bytes queued on `channel` but not yet sent.
    pub async fn buffered_amount(&self, channel: Channel) -> u64 {
        self.channel(channel).buffered_amount().await as u64
    }

    fn channel(&self, channel: Channel) -> &Arc<RTCDataChannel> {
        match channel {
            Channel::Chat => &self.chat,
            Channel::File => &self.file,
        }
    }

    /// How the connection travels: `"turn"` through a TURN relay, `"direct"` otherwise.
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

    /// Closes the connection.
    pub async fn close(&self) {
        if let Err(err) = self.pc.close().await {
            tracing::debug!(peer = %self.peer, %err, "closing peer connection");
        }
    }
}

/// Remote candidates held before the remote description arrives; a peer
/// sending more is misbehaving.
const MAX_EARLY_CANDIDATES: usize = 256;

async fn open_channel(
    pc: &Arc<RTCPeerConnection>,
    peer: &PeerId,
    channel: Channel,
    events: &mpsc::Sender<PeerEvent>,
) -> Result<Arc<RTCDataChannel>> {
    let (label, id) = match channel {
        Channel::Chat => (CHAT_CHANNEL_LABEL, CHAT_CHANNEL_ID),
        Channel::File => (FILE_CHANNEL_LABEL, FILE_CHANNEL_ID),
    };
    let init = RTCDataChannelInit {
        ordered: Some(true),
        negotiated: Some(id),
        ..Default::default()
    };
    let dc = pc
        .create_data_channel(label, Some(init))
        .await
        .context("creating data channel")?;
    let (tx, p) = (events.clone(), peer.clone());
    dc.on_open(Box::new(move || {
        Box::pin(async move {
            let _ = tx.send(PeerEvent::Open { peer: p, channel }).await;
        })
    }));
    let (tx, p) = (events.clone(), peer.clone());
    dc.on_close(Box::new(move || {
        let (tx, peer) = (tx.clone(), p.clone());
        Box::pin(async move {
            let _ = tx.send(PeerEvent::Closed { peer, channel }).await;
        })
    }));
    let (tx, p) = (events.clone(), peer.clone());
    dc.on_message(Box::new(move |msg| {
        let (tx, peer) = (tx.clone(), p.clone());
        // Awaiting the bounded channel here pauses the SCTP reader while the
        // driver is busy, which is the backpressure we want.
        Box::pin(async move {
            let _ = tx
                .send(PeerEvent::Message {
                    peer,
                    channel,
                    data: msg.data,
                })
                .await;
        })
    }));
    Ok(dc)
}
