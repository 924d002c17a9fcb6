//! Fault: a peer's network is cut mid-transfer (its router drops everything
//! for longer than ICE waits), then comes back. The peers restart ICE or fall
//! back to the server relay (webrtc-rs 0.17's SCTP association can stay
//! stuck after such an outage although ICE reconnects; the sender's progress
//! watchdog then moves the link to the relay), the receiver asks to resume
//! from what it has verified, and the file ends with the right hash having
//! re-sent only what was in flight: at most the sender's window of
//! unconfirmed bytes. Runs in network namespaces (see `parlor_tests::netns`).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use parlor_tests::netns::{self, Lab, Nat, Router, SERVER_IP};
use parlor_tests::{hash_file, random_file};

const FILE_BYTES: usize = 96 * 1024 * 1024;
const EXIT_TIMEOUT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread")]
async fn a_transfer_survives_a_network_cut_and_resends_little() {
    let _serial = parlor_tests::exclusive().await;
    if !netns::available("network_cut").unwrap() {
        return;
    }
    let lab = Lab::build("cut", [Router::open(Nat::PortRestrictedCone); 2]).unwrap();
    let _server = lab.start_server(&[]).await.unwrap();
    let base = format!("http://{SERVER_IP}:{}", netns::HTTP_PORT);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("cut.bin");
    let hash = random_file(&src, FILE_BYTES).unwrap();
    let out = dir.path().join("out");

    let mut sender = lab
        .spawn_peer(
            0,
            "sender",
            &["send", "--server", &base, src.to_str().unwrap()],
        )
        .unwrap();
    let link = sender.invite().await.unwrap();
    let mut receiver = lab
        .spawn_peer(
            1,
            "receiver",
            &["receive", &link, "--out", out.to_str().unwrap()],
        )
        .unwrap();
    let connected = receiver.wait_event("connected").await.unwrap();
    assert_eq!(connected["path"], "direct", "{connected}");

    // About a third in, the receiver's network goes away for 12 s: longer
    // than ICE's 8 s failure timeout.
    receiver
        .wait_for_within("a third of the file", Duration::from_secs(120), |v| {
            v["event"] == "progress" && v["done"].as_u64().unwrap_or(0) >= FILE_BYTES as u64 / 3
        })
        .await
        .unwrap();
    lab.cut(1, true).unwrap();
    tokio::time::sleep(Duration::from_secs(12)).await;
    lab.cut(1, false).unwrap();

    let status = receiver.wait_exit(EXIT_TIMEOUT).await;
    let tail = |h: &[serde_json::Value]| {
        h.iter()
            .filter(|v| v["event"] != "progress")
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(
        status.as_ref().is_ok_and(|s| s.success()),
        "receiver: {status:?}\n{:?}\n{}",
        tail(&receiver.history),
        lab.diagnostics()
    );
    let status = sender.wait_exit(EXIT_TIMEOUT).await.unwrap();
    assert!(status.success(), "{:?}", tail(&sender.history));
    let received = receiver.wait_event("file_received").await.unwrap();
    assert_eq!(received["hash"], hash.as_str());
    assert_eq!(hash_file(&out.join("cut.bin")).unwrap(), hash);
    // The cut was noticed (ICE failed, or the link moved), and little was
    // sent twice: at most one window per path change.
    // A path change as either side saw it: the receiver's relay also goes
    // down and up again when its signaling connection did not survive the
    // cut (what was relayed meanwhile is lost, so it asks to resume again).
    let path_changes =
        (sender.count("connected").max(receiver.count("connected"))).saturating_sub(1);
    assert!(
        sender.count("disconnected") + receiver.count("disconnected") + path_changes > 0,
        "the cut went unnoticed: {:?}",
        tail(&sender.history)
    );
    let sent = sender.wait_event("file_sent").await.unwrap();
    let bytes_sent = sent["bytes_sent"].as_u64().unwrap();
    let resent = bytes_sent.saturating_sub(FILE_BYTES as u64);
    let window = parlor_core::TransferConfig::default().max_unconfirmed;
    let allowed = window * path_changes.max(1) as u64;
    assert!(
        resent <= allowed,
        "re-sent {resent} of {FILE_BYTES} bytes, more than a {window}-byte window for each of \
         {path_changes} path change(s): sender {:?}\nreceiver {:?}",
        tail(&sender.history),
        tail(&receiver.history)
    );
}
