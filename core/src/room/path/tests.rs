//! Two [`Paths`] machines talking through a fake server, with scripted
//! links and a virtual clock; every output is checked against invariants.

use std::collections::{BTreeMap, BTreeSet};

use super::*;

fn id(s: &str) -> PeerId {
    PeerId(s.into())
}

fn sdp(certificate: u8) -> String {
    format!("v=0\r\na=fingerprint:sha-256 AA:{certificate:02X}\r\n")
}

/// One side of the room: its machine, its certificate, and what it did.
struct Side {
    me: PeerId,
    paths: Paths,
    certificate: u8,
    /// Links opened and not closed.
    open_links: BTreeSet<LinkId>,
    /// Links closed (their events are stale).
    closed_links: BTreeSet<LinkId>,
    /// Peers whose chat is up.
    chat_up: BTreeSet<PeerId>,
    /// Everything it output, in order.
    log: Vec<PathOutput>,
}

impl Side {
    fn new(me: &str, policy: PathPolicy, epoch: u64, certificate: u8) -> Self {
        Self {
            me: id(me),
            paths: Paths::new(PathSettings::new(policy, epoch)),
            certificate,
            open_links: BTreeSet::new(),
            closed_links: BTreeSet::new(),
            chat_up: BTreeSet::new(),
            log: Vec::new(),
        }
    }

    /// The current link to `peer`.
    fn link(&self, peer: &PeerId) -> LinkId {
        match self.paths.route(peer) {
            Some(Route::WebRtc(link)) => link,
            other => panic!("{} has no link to {peer}: {other:?}", self.me),
        }
    }

    fn count(&self, pred: impl Fn(&PathOutput) -> bool) -> usize {
        self.log.iter().filter(|o| pred(o)).count()
    }
}

/// What crosses the network between the two sides.
enum Wire {
    Signal(PeerSignal),
    Relay(RelayPayload),
}

/// Two sides, a fake server that forwards signals and relay packets, and a clock.
struct Room {
    sides: BTreeMap<PeerId, Side>,
    now: Millis,
    server_up: bool,
    /// Relay packets dropped (the server relay loses nothing, but a test
    /// may cut it).
    in_flight: Vec<(PeerId, PeerId, Wire)>,
}

impl Room {
    fn new(a: Side, b: Side) -> Self {
        let mut sides = BTreeMap::new();
        sides.insert(a.me.clone(), a);
        sides.insert(b.me.clone(), b);
        Self {
            sides,
            now: 0,
            server_up: true,
            in_flight: Vec::new(),
        }
    }

    fn side(&mut self, who: &str) -> &mut Side {
        self.sides.get_mut(&id(who)).expect("side")
    }

    fn input(&mut self, who: &str, input: PathInput) {
        let now = self.now;
        self.side(who).paths.handle(input, now);
        self.pump();
    }

    /// Drains every side's outputs, checks invariants, delivers messages
    /// until nothing moves.
    fn pump(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            let names: Vec<PeerId> = self.sides.keys().cloned().collect();
            for name in &names {
                while let Some(out) = self.sides.get_mut(name).and_then(|s| s.paths.poll_output()) {
                    moved = true;
                    self.carry_out(name, out);
                }
            }
            let flight = std::mem::take(&mut self.in_flight);
            for (from, to, wire) in flight {
                moved = true;
                if !self.server_up {
                    continue;
                }
                let now = self.now;
                let Some(side) = self.sides.get_mut(&to) else {
                    continue;
                };
                match wire {
                    Wire::Signal(signal) => {
                        side.paths.handle(PathInput::Signal { from, signal }, now)
                    }
                    Wire::Relay(payload) => {
                        side.paths.relay_packet(&from, &payload, now);
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the room never settled");
    }

    fn carry_out(&mut self, name: &PeerId, out: PathOutput) {
        let side = self.sides.get_mut(name).expect("side");
        side.log.push(out.clone());
        let me = side.me.clone();
        match out {
            PathOutput::OpenLink { link, .. } => {
                assert!(side.open_links.insert(link), "{me}: {link} opened twice");
                assert!(!side.closed_links.contains(&link));
            }
            PathOutput::CloseLink { link } => {
                assert!(side.open_links.remove(&link), "{me}: closed unknown {link}");
                side.closed_links.insert(link);
            }
            PathOutput::CreateOffer { link, .. } | PathOutput::AcceptOffer { link, .. } => {
                assert!(side.open_links.contains(&link), "{me}: {link} not open");
                let peer = side.paths.peer_of(link).expect("current link").clone();
                let sdp = sdp(side.certificate);
                let signal = if matches!(out, PathOutput::CreateOffer { .. }) {
                    PeerSignal::Offer { sdp }
                } else {
                    PeerSignal::Answer { sdp }
                };
                self.in_flight.push((me, peer, Wire::Signal(signal)));
            }
            PathOutput::AcceptAnswer { link, .. } | PathOutput::AddCandidate { link, .. } => {
                assert!(side.open_links.contains(&link), "{me}: {link} not open");
            }
            PathOutput::Signal { to, signal } => {
                self.in_flight.push((me, to, Wire::Signal(signal)))
            }
            PathOutput::Relay { to, payload } => {
                self.in_flight.push((me, to, Wire::Relay(payload)))
            }
            PathOutput::ChatUp { peer } => {
                assert!(
                    side.chat_up.insert(peer.clone()),
                    "{me}: chat to {peer} up twice"
                );
            }
            PathOutput::ChatDown { peer } => {
                assert!(
                    side.chat_up.remove(&peer),
                    "{me}: chat to {peer} down while down"
                );
            }
            PathOutput::Connected { peer, route } => {
                assert_eq!(
                    side.paths.route(&peer),
                    Some(route),
                    "{me}: stale Connected"
                );
            }
            _ => {}
        }
    }

    /// Moves the clock to `t`, firing every deadline on the way.
    fn advance_to(&mut self, t: Millis) {
        loop {
            let next = self
                .sides
                .values()
                .filter_map(|s| s.paths.poll_timeout())
                .min()
                .filter(|&n| n <= t);
            let Some(next) = next else { break };
            self.now = self.now.max(next);
            let now = self.now;
            for side in self.sides.values_mut() {
                if side.paths.poll_timeout().is_some_and(|n| n <= now) {
                    side.paths.handle_timeout(now);
                }
            }
            self.pump();
        }
        self.now = t;
    }

    /// Both sides report the link between them connected, with chat and
    /// file channels open.
    fn connect(&mut self, a: &str, b: &str) {
        for (x, y) in [(a, b), (b, a)] {
            let link = self.side(x).link(&id(y));
            self.input(x, PathInput::LinkConnected { link });
            self.input(
                x,
                PathInput::ChannelOpen {
                    link,
                    channel: Channel::Chat,
                },
            );
            self.input(
                x,
                PathInput::ChannelOpen {
                    link,
                    channel: Channel::File,
                },
            );
        }
    }

    /// `b` joins a room where `a` is: the server tells both.
    fn join(&mut self, a: &str, b: &str) {
        self.input(
            a,
            PathInput::Joined {
                me: id(a),
                peers: vec![],
            },
        );
        self.input(a, PathInput::PeerJoined { peer: id(b) });
        self.input(
            b,
            PathInput::Joined {
                me: id(b),
                peers: vec![id(a)],
            },
        );
    }

    /// `who` restarts as `fresh` (a new process or page load) under the
    /// same id, faster than the server notices, and rejoins where `other` is.
    fn restart(&mut self, who: &str, fresh: Side, other: &str) {
        self.sides.insert(id(who), fresh);
        self.input(
            who,
            PathInput::Joined {
                me: id(who),
                peers: vec![id(other)],
            },
        );
    }
}

fn room(policy_b: PathPolicy) -> Room {
    Room::new(
        Side::new("a", PathPolicy::Any, 11, 1),
        Side::new("b", policy_b, 22, 2),
    )
}

fn is_relay_up(room: &mut Room, who: &str, peer: &str) -> bool {
    let side = room.side(who);
    side.paths.route(&id(peer)) == Some(Route::ServerRelay) && side.paths.is_up(&id(peer))
}

#[test]
fn the_newcomer_offers_and_both_come_up_directly() {
    let mut room = room(PathPolicy::Any);
    room.join("a", "b");
    let b = room.side("b");
    assert!(matches!(
        b.log[0],
        PathOutput::OpenLink { offerer: true, .. }
    ));
    let a = room.side("a");
    assert!(matches!(
        a.log[0],
        PathOutput::OpenLink { offerer: false, .. }
    ));
    room.connect("a", "b");
    for (x, y) in [("a", "b"), ("b", "a")] {
        let side = room.side(x);
        assert!(side.paths.is_up(&id(y)));
        assert!(side.chat_up.contains(&id(y)));
        assert_eq!(
            side.count(|o| matches!(
                o,
                PathOutput::FilesUp {
                    path_changed: false,
                    ..
                }
            )),
            1
        );
        assert_eq!(side.count(|o| matches!(o, PathOutput::Relay { .. })), 0);
    }
}

#[test]
fn a_link_not_connected_in_8_s_falls_to_the_relay_on_both_sides() {
    let mut room = room(PathPolicy::Any);
    room.join("a", "b");
    room.advance_to(7_999);
    assert!(
        room.side("b")
            .paths
            .route(&id("a"))
            .is_some_and(|r| r != Route::ServerRelay)
    );
    room.advance_to(8_000);
    assert!(is_relay_up(&mut room, "a", "b"));
    assert!(is_relay_up(&mut room, "b", "a"));
    for (x, y) in [("a", "b"), ("b", "a")] {
        let side = room.side(x);
        assert!(side.open_links.is_empty(), "{x}: WebRTC link left open");
        assert!(side.chat_up.contains(&id(y)));
        assert_eq!(
            side.count(|o| matches!(
                o,
                PathOutput::Connected {
                    route: Route::ServerRelay,
                    ..
                }
            )),
            1
        );
    }
    // The handshake is bounded: one Switch each way plus at most one reply each.
    let switches: usize = room
        .sides
        .values()
        .map(|s| s.count(|o| matches!(o, PathOutput::Relay { .. })))
        .sum();
    assert!(switches <= 4, "{switches} Switch packets");
}

#[test]
fn a_failed_link_gets_one_ice_restart_on_the_same_link_and_transfers_reset() {
    let mut room = room(PathPolicy::Any);
    room.join("a", "b");
    room.connect("a", "b");
    let (link_a, link_b) = (room.side("a").link(&id("b")), room.side("b").link(&id("a")));
    room.now = 20_000;
    room.input("a", PathInput::LinkFailed { link: link_a });
    room.input("b", PathInput::LinkFailed { link: link_b });
    // b made the first offer: it restarts ICE; a accepts it on the same link.
    let b = room.side("b");
    assert_eq!(
        b.count(|o| matches!(
            o,
            PathOutput::CreateOffer {
                ice_restart: true,
                ..
            }
        )),
        1
    );
    assert_eq!(
        room.side("a")
            .count(|o| matches!(o, PathOutput::CreateOffer { .. })),
        0
    );
    assert_eq!(room.side("a").link(&id("b")), link_a);
    assert_eq!(
        room.side("a")
            .count(|o| matches!(o, PathOutput::PeerRestarted { .. })),
        0
    );
    room.input("a", PathInput::LinkConnected { link: link_a });
    room.input("b", PathInput::LinkConnected { link: link_b });
    for x in ["a", "b"] {
        let side = room.side(x);
        assert_eq!(
            side.count(|o| matches!(
                o,
                PathOutput::FilesUp {
                    path_changed: true,
                    ..
                }
            )),
            1,
            "{x}"
        );
        assert_eq!(
            side.count(|o| matches!(o, PathOutput::Disconnected { .. })),
            1,
            "{x}"
        );
    }
    // The restart deadline no longer applies.
    room.advance_to(60_000);
    assert_eq!(
        room.side("a").paths.route(&id("b")),
        Some(Route::WebRtc(link_a))
    );
}

#[test]
fn an_ice_restart_that_does_not_connect_ends_on_the_relay() {
    let mut room = room(PathPolicy::Any);
    room.join("a", "b");
    room.connect("a", "b");
    room.now = 20_000;
    let (link_a, link_b) = (room.side("a").link(&id("b")), room.side("b").link(&id("a")));
    room.input("a", PathInput::LinkFailed { link: link_a });
    room.input("b", PathInput::LinkFailed { link: link_b });
    room.advance_to(28_000);
    assert!(is_relay_up(&mut room, "a", "b"));
    assert!(is_relay_up(&mut room, "b", "a"));

    // b's ICE-restart offer, held up by its network, arrives now: the link
    // it was for is gone, and it must not make b reset its transfers again
    // (each reset re-sends a window).
    let resets = |room: &mut Room| {
        room.side("b").count(|o| {
            matches!(
                o,
                PathOutput::FilesUp {
                    path_changed: true,
                    ..
                }
            )
        })
    };
    let before = resets(&mut room);
    room.input(
        "a",
        PathInput::Signal {
            from: id("b"),
            signal: PeerSignal::Offer { sdp: sdp(2) },
        },
    );
    assert_eq!(resets(&mut room), before);
    assert_eq!(
        room.side("a").paths.route(&id("b")),
        Some(Route::ServerRelay)
    );
    // An offer under another certificate is a restarted peer: it is told
    // that we talk through the relay.
    let switches = room
        .side("a")
        .count(|o| matches!(o, PathOutput::Relay { .. }));
    room.input(
        "a",
        PathInput::Signal {
            from: id("b"),
            signal: PeerSignal::Offer { sdp: sdp(7) },
        },
    );
    assert!(
        room.side("a")
            .count(|o| matches!(o, PathOutput::Relay { .. }))
            > switches
    );
}

#[test]
fn an_offer_under_a_new_certificate_is_a_restarted_peer_and_the_old_links_late_close_is_dropped() {
    let mut room = room(PathPolicy::Any);
    room.join("a", "b");
    room.connect("a", "b");
    let old = room.side("a").link(&id("b"));
    // b reloads faster than the server notices: same id, new certificate.
    room.restart("b", Side::new("b", PathPolicy::Any, 33, 9), "a");
    let a = room.side("a");
    assert_eq!(
        a.count(|o| matches!(o, PathOutput::PeerRestarted { .. })),
        1
    );
    assert!(a.closed_links.contains(&old));
    let new = a.link(&id("b"));
    assert_ne!(new, old);
    // The old connection's Closed event arrives late: nothing happens.
    room.input("a", PathInput::LinkClosed { link: old });
    assert_eq!(room.side("a").link(&id("b")), new);
    assert_eq!(
        room.side("a")
            .count(|o| matches!(o, PathOutput::Gone { .. })),
        0
    );
    room.connect("a", "b");
    assert!(room.side("a").paths.is_up(&id("b")));
}

#[test]
fn an_offer_without_a_fingerprint_refuses_the_peer_for_good() {
    let mut room = room(PathPolicy::Any);
    room.input(
        "a",
        PathInput::Joined {
            me: id("a"),
            peers: vec![],
        },
    );
    room.input("a", PathInput::PeerJoined { peer: id("b") });
    room.input(
        "a",
        PathInput::Signal {
            from: id("b"),
            signal: PeerSignal::Offer {
                sdp: "v=0\r\n".into(),
            },
        },
    );
    let a = room.side("a");
    assert_eq!(a.count(|o| matches!(o, PathOutput::Refused { .. })), 1);
    assert!(a.paths.is_refused(&id("b")));
    // Neither a rejoin nor relay packets bring it back.
    room.input(
        "a",
        PathInput::Joined {
            me: id("a"),
            peers: vec![id("b")],
        },
    );
    let a = room.side("a");
    assert_eq!(a.count(|o| matches!(o, PathOutput::OpenLink { .. })), 0);
    let switch = RelayPayload::Switch {
        epoch: 5,
        reply: false,
    };
    assert!(!a.paths.relay_packet(&id("b"), &switch, 0));
    assert_eq!(a.paths.route(&id("b")), None);
}

#[test]
fn a_relayed_peer_that_restarts_is_recognised_by_its_epoch() {
    let mut room = room(PathPolicy::ServerOnly);
    room.join("a", "b");
    assert!(is_relay_up(&mut room, "a", "b"));
    assert!(is_relay_up(&mut room, "b", "a"));
    // b restarts (new epoch) without the server noticing it leave.
    room.restart("b", Side::new("b", PathPolicy::ServerOnly, 44, 2), "a");
    let a = room.side("a");
    assert_eq!(
        a.count(|o| matches!(o, PathOutput::PeerRestarted { .. })),
        1
    );
    assert!(
        a.count(|o| matches!(
            o,
            PathOutput::FilesUp {
                path_changed: true,
                ..
            }
        )) >= 2
    );
    assert!(is_relay_up(&mut room, "b", "a"));
}

#[test]
fn a_server_blip_while_relayed_brings_the_relay_back_after_the_rejoin() {
    let mut room = room(PathPolicy::ServerOnly);
    room.join("a", "b");
    room.server_up = false;
    room.input("a", PathInput::SignalingLost);
    room.input("b", PathInput::SignalingLost);
    assert!(!room.side("a").paths.is_up(&id("b")));
    assert!(room.side("a").chat_up.is_empty());
    room.server_up = true;
    room.input(
        "a",
        PathInput::Joined {
            me: id("a"),
            peers: vec![id("b")],
        },
    );
    room.input(
        "b",
        PathInput::Joined {
            me: id("b"),
            peers: vec![id("a")],
        },
    );
    assert!(is_relay_up(&mut room, "a", "b"));
    assert!(is_relay_up(&mut room, "b", "a"));
    assert_eq!(
        room.side("a")
            .count(|o| matches!(o, PathOutput::PeerRestarted { .. })),
        0
    );
}

/// `a` and `b` connected; then `b` loses the server and rejoins as `b2`,
/// with `listed` present.
fn rejoined_as_b2(listed: &[&str]) -> Room {
    let mut room = room(PathPolicy::Any);
    room.join("a", "b");
    room.connect("a", "b");
    room.input("b", PathInput::SignalingLost);
    room.input(
        "b",
        PathInput::Joined {
            me: id("b2"),
            peers: listed.iter().map(|p| id(p)).collect(),
        },
    );
    room
}

#[test]
fn a_rejoin_under_a_new_id_starts_over() {
    let mut room = rejoined_as_b2(&["a"]);
    let b = room.side("b");
    assert_eq!(b.count(|o| matches!(o, PathOutput::StartedOver)), 1);
    // The old link closed, a new one offered.
    assert_eq!(b.closed_links.len(), 1);
    assert_eq!(b.open_links.len(), 1);
}

#[test]
fn after_starting_over_the_old_peers_expire_unless_they_show_up_again() {
    let mut room = rejoined_as_b2(&[]);
    assert_eq!(
        room.side("b")
            .count(|o| matches!(o, PathOutput::StartedOver)),
        1
    );
    // Transfers parked for `a` must not wait for ever.
    room.advance_to(24 * 3_600_000);
    assert_eq!(
        room.side("b")
            .count(|o| matches!(o, PathOutput::AwayExpired { peer } if *peer == id("a"))),
        1
    );
}

#[test]
fn an_away_peer_is_back_within_the_window_or_expires() {
    let mut room = room(PathPolicy::Any);
    room.join("a", "b");
    room.connect("a", "b");
    room.now = 1_000;
    room.input("a", PathInput::PeerLeft { peer: id("b") });
    let a = room.side("a");
    assert_eq!(
        a.count(|o| matches!(
            o,
            PathOutput::Gone {
                reason: GoneReason::Left,
                ..
            }
        )),
        1
    );
    assert!(a.open_links.is_empty());
    room.advance_to(200_000);
    room.input("a", PathInput::PeerJoined { peer: id("b") });
    assert_eq!(
        room.side("a")
            .count(|o| matches!(o, PathOutput::Returned { .. })),
        1
    );
    room.input("a", PathInput::PeerLeft { peer: id("b") });
    room.advance_to(200_000 + 5 * 60_000);
    let a = room.side("a");
    assert_eq!(a.count(|o| matches!(o, PathOutput::AwayExpired { .. })), 1);
    assert_eq!(a.count(|o| matches!(o, PathOutput::Returned { .. })), 1);
}

#[test]
fn a_stalled_transfer_moves_to_the_relay_and_a_relay_stall_re_switches() {
    let mut room = room(PathPolicy::Any);
    room.join("a", "b");
    room.connect("a", "b");
    room.now = 1_000;
    room.input(
        "a",
        PathInput::SendProgress {
            peer: id("b"),
            waiting: true,
            advanced: true,
        },
    );
    room.advance_to(10_999);
    assert!(matches!(
        room.side("a").paths.route(&id("b")),
        Some(Route::WebRtc(_))
    ));
    room.advance_to(11_000);
    assert!(is_relay_up(&mut room, "a", "b"));
    let before = room.side("a").count(|o| {
        matches!(
            o,
            PathOutput::FilesUp {
                path_changed: true,
                ..
            }
        )
    });
    // Nothing confirmed on the relay either: Switch again, reset transfers.
    room.input(
        "a",
        PathInput::SendProgress {
            peer: id("b"),
            waiting: true,
            advanced: false,
        },
    );
    room.advance_to(21_000);
    let a = room.side("a");
    assert_eq!(
        a.count(|o| matches!(
            o,
            PathOutput::FilesUp {
                path_changed: true,
                ..
            }
        )),
        before + 1
    );
    assert!(is_relay_up(&mut room, "a", "b"));
}

#[test]
fn a_failure_while_the_server_is_gone_loses_the_peer_instead_of_relaying() {
    let mut room = room(PathPolicy::Any);
    room.join("a", "b");
    room.connect("a", "b");
    room.input("a", PathInput::SignalingLost);
    let link = room.side("a").link(&id("b"));
    room.input("a", PathInput::LinkFailed { link });
    let a = room.side("a");
    assert_eq!(
        a.count(|o| matches!(
            o,
            PathOutput::Gone {
                reason: GoneReason::ConnectionLost,
                ..
            }
        )),
        1
    );
    assert_eq!(a.count(|o| matches!(o, PathOutput::Relay { .. })), 0);
}
