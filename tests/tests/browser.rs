//! End-to-end in real headless Chromium: pages served by a real
//! `parlor-server`, talking to each other and to the native `parlor` CLI over
//! real WebRTC. Runs when `PARLOR_BROWSER_TESTS=1` (`cargo xtask test`).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use parlor_tests::browser::{self, PAGE_TIMEOUT, Page};
use parlor_tests::{Peer, Server, hash_file, random_file};
use serde_json::json;

const TRANSFER_TIMEOUT: Duration = Duration::from_secs(180);

async fn server() -> Server {
    let dir = browser::web_dir();
    assert!(
        dir.join("index.html").exists(),
        "build the web app first (cargo xtask test does)"
    );
    Server::start(&["--web-dir", dir.to_str().unwrap()])
        .await
        .unwrap()
}

/// Opens `/`, starts a room, and returns the page and its invite link.
async fn start_room(server: &Server) -> (Page, String) {
    let page = Page::open().await.unwrap();
    page.goto(&format!("{}/", server.base)).await.unwrap();
    page.wait_js(
        "a 'Start a room' button to click",
        "(() => { const b = [...document.querySelectorAll('button')].find(b => b.textContent.trim() === 'Start a room'); \
         if (b) { b.click(); return true; } return false; })()",
        PAGE_TIMEOUT,
    )
    .await
    .unwrap();
    let link = page.invite_link().await.unwrap();
    assert!(link.starts_with(&format!("{}/r/", server.base)), "{link}");
    (page, link)
}

async fn join(link: &str) -> Page {
    let page = Page::open().await.unwrap();
    page.goto(link).await.unwrap();
    page
}

/// Waits for a transfer of `name` in `state` on `page`; returns its data-hash.
async fn wait_transfer(page: &Page, name: &str, state: &str, timeout: Duration) -> String {
    let script = format!(
        "(() => {{ const t = [...document.querySelectorAll('[data-transfer-id]')].find(e => e.dataset.name === {n} && e.dataset.state === {s}); return t ? (t.dataset.hash || 'yes') : null; }})()",
        n = json!(name),
        s = json!(state)
    );
    page.wait_js(&format!("transfer {name} {state}"), &script, timeout)
        .await
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

async fn accept(page: &Page, name: &str) {
    wait_transfer(page, name, "offered", PAGE_TIMEOUT).await;
    let script = format!(
        "const t = [...document.querySelectorAll('[data-transfer-id]')].find(e => e.dataset.name === {n}); \
         const b = [...t.querySelectorAll('button')].find(b => b.textContent.trim() === 'Accept' || b.getAttribute('aria-label') === 'Accept'); \
         b.click(); return true;",
        n = json!(name)
    );
    page.client.execute(&script, vec![]).await.unwrap();
}

/// Clicks the "Save NAME" link and waits for the download to finish on disk.
async fn save(page: &Page, name: &str) -> std::path::PathBuf {
    let link = page
        .find(&format!(
            "a[download][aria-label={}]",
            json!(format!("Save {name}"))
        ))
        .await
        .unwrap();
    link.click().await.unwrap();
    let path = page.downloads.path().join(name);
    let deadline = tokio::time::Instant::now() + TRANSFER_TIMEOUT;
    loop {
        let partial = std::fs::read_dir(page.downloads.path()).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".crdownload")
        });
        if path.exists() && !partial {
            return path;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "download of {name} did not finish"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_pages_chat_and_send_a_50_mb_file() {
    let _serial = parlor_tests::exclusive().await;
    if !browser::enabled("two_pages_chat_and_send_a_50_mb_file") {
        return;
    }
    let server = server().await;
    let (a, link) = start_room(&server).await;
    let b = join(&link).await;
    a.wait_peers_connected(1).await.unwrap();
    b.wait_peers_connected(1).await.unwrap();

    a.say("hello from page a").await.unwrap();
    b.wait_message("hello from page a").await.unwrap();
    b.say("page b answers").await.unwrap();
    a.wait_message("page b answers").await.unwrap();
    a.wait_js(
        "own message delivered",
        "document.querySelector('li.message[data-from=me][data-status=delivered]') !== null",
        PAGE_TIMEOUT,
    )
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("fifty.bin");
    let hash = random_file(&src, 50 * 1024 * 1024).unwrap();
    a.send_files(&[&src]).await.unwrap();
    accept(&b, "fifty.bin").await;
    wait_transfer(&b, "fifty.bin", "active", PAGE_TIMEOUT).await;
    a.say("a file is on its way").await.unwrap();
    b.wait_message("a file is on its way").await.unwrap();
    // The README's screenshot: a room with messages and a transfer in progress.
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/room.png");
    b.screenshot(&docs).await.unwrap();

    let got = wait_transfer(&b, "fifty.bin", "done", TRANSFER_TIMEOUT).await;
    assert_eq!(got, hash, "receiver verified a different hash");
    wait_transfer(&a, "fifty.bin", "done", PAGE_TIMEOUT).await;
    let saved = save(&b, "fifty.bin").await;
    assert_eq!(hash_file(&saved).unwrap(), hash, "downloaded file differs");
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_and_the_cli_chat_and_send_files_both_ways() {
    let _serial = parlor_tests::exclusive().await;
    if !browser::enabled("a_page_and_the_cli_chat_and_send_files_both_ways") {
        return;
    }
    let server = server().await;
    let (page, link) = start_room(&server).await;
    let mut cli = Peer::spawn("cli", &["chat", &link]).unwrap();
    cli.wait_connected(1).await.unwrap();
    page.wait_peers_connected(1).await.unwrap();

    page.say("hello cli, this is the page").await.unwrap();
    cli.wait_for("page message", |v| {
        v["event"] == "message" && v["text"] == "hello cli, this is the page"
    })
    .await
    .unwrap();
    cli.say("hello page, this is the cli").await.unwrap();
    page.wait_message("hello page, this is the cli")
        .await
        .unwrap();
    cli.close_stdin();
    assert!(
        cli.wait_exit(Duration::from_secs(60))
            .await
            .unwrap()
            .success()
    );

    // Page -> CLI.
    let dir = tempfile::tempdir().unwrap();
    let to_cli = dir.path().join("from-page.bin");
    let hash_to_cli = random_file(&to_cli, 3 * 1024 * 1024 + 17).unwrap();
    let out = dir.path().join("out");
    let mut receiver = Peer::spawn(
        "cli-receiver",
        &["receive", &link, "--out", out.to_str().unwrap()],
    )
    .unwrap();
    receiver.wait_connected(1).await.unwrap();
    page.wait_peers_connected(1).await.unwrap();
    page.send_files(&[&to_cli]).await.unwrap();
    assert!(
        receiver
            .wait_exit(TRANSFER_TIMEOUT)
            .await
            .unwrap()
            .success(),
        "{:?}",
        receiver.history
    );
    assert_eq!(hash_file(&out.join("from-page.bin")).unwrap(), hash_to_cli);
    wait_transfer(&page, "from-page.bin", "done", PAGE_TIMEOUT).await;

    // CLI -> page: the CLI creates a room, the page opens its link.
    let to_page = dir.path().join("from-cli.bin");
    let hash_to_page = random_file(&to_page, 5 * 1024 * 1024 + 3).unwrap();
    let mut sender = Peer::spawn(
        "cli-sender",
        &["send", "--server", &server.base, to_page.to_str().unwrap()],
    )
    .unwrap();
    let cli_link = sender.invite().await.unwrap();
    let page2 = join(&cli_link).await;
    accept(&page2, "from-cli.bin").await;
    let got = wait_transfer(&page2, "from-cli.bin", "done", TRANSFER_TIMEOUT).await;
    assert_eq!(got, hash_to_page);
    assert!(
        sender.wait_exit(TRANSFER_TIMEOUT).await.unwrap().success(),
        "{:?}",
        sender.history
    );
    page.close().await;
    page2.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_joining_later_sees_the_peers_present() {
    let _serial = parlor_tests::exclusive().await;
    if !browser::enabled("a_page_joining_later_sees_the_peers_present") {
        return;
    }
    let server = server().await;
    let (a, link) = start_room(&server).await;
    let b = join(&link).await;
    a.wait_peers_connected(1).await.unwrap();
    b.wait_peers_connected(1).await.unwrap();
    let c = join(&link).await;
    c.wait_peers_connected(2).await.unwrap();
    a.wait_peers_connected(2).await.unwrap();
    let ids = c.find_all("li[data-peer-id]").await.unwrap().len();
    assert_eq!(ids, 2, "the late joiner lists both peers already present");
    c.say("late but here").await.unwrap();
    a.wait_message("late but here").await.unwrap();
    b.wait_message("late but here").await.unwrap();
    for p in [a, b, c] {
        p.close().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reloading_the_page_keeps_the_chat_history() {
    let _serial = parlor_tests::exclusive().await;
    if !browser::enabled("reloading_the_page_keeps_the_chat_history") {
        return;
    }
    let server = server().await;
    let (a, link) = start_room(&server).await;
    let b = join(&link).await;
    b.wait_peers_connected(1).await.unwrap();
    a.say("remember me").await.unwrap();
    b.wait_message("remember me").await.unwrap();
    b.say("and me").await.unwrap();
    a.wait_message("and me").await.unwrap();

    b.client.refresh().await.unwrap();
    b.wait_message("remember me").await.unwrap();
    b.wait_message("and me").await.unwrap();
    // Shown once each after the reload, in order.
    let texts = b.messages().await.unwrap();
    assert_eq!(texts, ["remember me", "and me"]);
    a.close().await;
    b.close().await;
}
