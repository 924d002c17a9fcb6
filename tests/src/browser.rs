//! Real headless Chromium pages for end-to-end tests, driven over WebDriver
//! (Debian's `chromium` + `chromium-driver`, via fantoccini).
//!
//! Each [`Page`] is its own chromedriver and its own browser process with a
//! fresh profile, like two people on two machines. Browser tests run only
//! when `PARLOR_BROWSER_TESTS=1` (set by `cargo xtask test`, which also builds
//! the web app); otherwise they say loudly that they were skipped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// The real Chromium binary (`/usr/bin/chromium` is a shell wrapper).
const CHROMIUM: &str = "/usr/lib/chromium/chromium";
/// Default bound on waiting for something on a page.
pub const PAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether browser tests should run; prints why not when they should not.
pub fn enabled(test: &str) -> bool {
    if std::env::var("PARLOR_BROWSER_TESTS").as_deref() == Ok("1") {
        return true;
    }
    eprintln!(
        "!!! SKIPPED browser test `{test}`: set PARLOR_BROWSER_TESTS=1 (cargo xtask test does, after building the web app)"
    );
    false
}

/// The workspace's built web app (`dist/`), which the test server serves.
pub fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist")
}

/// One browser window with its own chromedriver and profile.
pub struct Page {
    /// The WebDriver session.
    pub client: Client,
    driver: Child,
    /// The way to a chromedriver in another network namespace.
    _forward: Option<crate::netns::Forward>,
    _profile: tempfile::TempDir,
    /// Where this browser saves downloads.
    pub downloads: tempfile::TempDir,
}

impl std::fmt::Debug for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Page").finish_non_exhaustive()
    }
}

impl Page {
    /// Starts chromedriver and a headless Chromium.
    pub async fn open() -> Result<Self> {
        Self::open_in(None, &[]).await
    }

    /// [`Self::open`] with extra Chromium command-line flags.
    pub async fn open_with(args: &[String]) -> Result<Self> {
        Self::open_in(None, args).await
    }

    /// Starts chromedriver and a headless Chromium inside network namespace
    /// `namespace` (`ip netns` name; `None`: this one), with extra Chromium
    /// flags `args`. A chromedriver in another namespace is reached through
    /// a [`crate::netns::Forward`].
    pub async fn open_in(namespace: Option<&str>, args: &[String]) -> Result<Self> {
        // With the whole workspace built together rustls has two crypto
        // backends enabled and will not guess; choose one (a no-op when one
        // is already installed).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = free_port()?;
        let mut driver = match namespace {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, "chromedriver"]);
                cmd
            }
            None => Command::new("chromedriver"),
        };
        let driver = driver
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting chromedriver (apt-get install chromium-driver)")?;
        let forward = match namespace {
            Some(ns) => Some(crate::netns::Forward::start(ns, port).await?),
            None => None,
        };
        let url = format!(
            "http://127.0.0.1:{}",
            forward.as_ref().map_or(port, |f| f.port)
        );
        let profile = tempfile::tempdir()?;
        let downloads = tempfile::tempdir()?;
        let mut flags = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-features=WebRtcHideLocalIpsWithMdns".into(),
            "--window-size=1100,900".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        flags.extend_from_slice(args);
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": flags,
                "prefs": {
                    "download.default_directory": downloads.path(),
                    "download.prompt_for_download": false,
                },
            }),
        );
        let mut last_err = None;
        // chromedriver needs a moment to listen; bounded retries.
        for _ in 0..50 {
            match ClientBuilder::rustls()?
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => {
                    return Ok(Self {
                        client,
                        driver,
                        _forward: forward,
                        _profile: profile,
                        downloads,
                    });
                }
                Err(err) => {
                    last_err = Some(err);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        bail!("cannot open a Chromium session: {last_err:?}")
    }

    /// Loads `url`.
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.client
            .goto(url)
            .await
            .with_context(|| format!("opening {url}"))
    }

    /// Waits for an element matching `css`.
    pub async fn find(&self, css: &str) -> Result<Element> {
        self.client
            .wait()
            .at_most(PAGE_TIMEOUT)
            .every(Duration::from_millis(100))
            .for_element(Locator::Css(css))
            .await
            .with_context(|| format!("no element matches {css}"))
    }

    /// Every element matching `css` now.
    pub async fn find_all(&self, css: &str) -> Result<Vec<Element>> {
        Ok(self.client.find_all(Locator::Css(css)).await?)
    }

    /// Waits until `script` (a JS expression) is truthy, returning its value.
    pub async fn wait_js(&self, what: &str, script: &str, timeout: Duration) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let value = self
                .client
                .execute(&format!("return ({script});"), vec![])
                .await?;
            let truthy = !matches!(&value, Value::Null | Value::Bool(false))
                && value != json!(0)
                && value != json!("");
            if truthy {
                return Ok(value);
            }
            if tokio::time::Instant::now() >= deadline {
                let alert = self.client.execute(
                    "const a = document.querySelector('[role=alert]'); return a ? a.textContent : null;",
                    vec![],
                ).await.ok();
                bail!("timed out waiting for {what} (page alert: {alert:?})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Types `text` into the message box and presses the Send button.
    pub async fn say(&self, text: &str) -> Result<()> {
        let input = self.find("[aria-label='Message']").await?;
        input.send_keys(text).await?;
        self.find("[aria-label='Send']").await?.click().await?;
        Ok(())
    }

    /// Waits until a message with exactly `text` is shown.
    pub async fn wait_message(&self, text: &str) -> Result<()> {
        let script = format!(
            "[...document.querySelectorAll('li.message .text')].some(e => e.textContent === {})",
            json!(text)
        );
        self.wait_js(&format!("message {text:?}"), &script, PAGE_TIMEOUT)
            .await
            .map(|_| ())
    }

    /// The texts of all messages shown, in order.
    pub async fn messages(&self) -> Result<Vec<String>> {
        let v = self
            .client
            .execute("return [...document.querySelectorAll('li.message .text')].map(e => e.textContent);", vec![])
            .await?;
        Ok(serde_json::from_value(v)?)
    }

    /// The invite link shown on the room page.
    pub async fn invite_link(&self) -> Result<String> {
        let v = self
            .wait_js(
                "invite link",
                "(() => { const e = document.getElementById('invite-link'); if (!e) return null; \
                 const t = (e.value || e.textContent || '').trim(); return t.includes('#') ? t : null; })()",
                PAGE_TIMEOUT,
            )
            .await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// Opens `BASE/`, presses "Start a room" and returns the room's invite
    /// link (which must be on `base`).
    pub async fn start_room(&self, base: &str) -> Result<String> {
        self.goto(&format!("{base}/")).await?;
        self.wait_js(
            "a 'Start a room' button to click",
            "(() => { const b = [...document.querySelectorAll('button')].find(b => b.textContent.trim() === 'Start a room'); \
             if (b) { b.click(); return true; } return false; })()",
            PAGE_TIMEOUT,
        )
        .await?;
        let link = self.invite_link().await?;
        anyhow::ensure!(
            link.starts_with(&format!("{base}/r/")),
            "invite link {link} is not on {base}"
        );
        Ok(link)
    }

    /// Waits until `n` remote peers show a connected state (direct, TURN
    /// relay or server relay).
    pub async fn wait_peers_connected(&self, n: usize) -> Result<()> {
        let script = format!(
            "document.querySelectorAll('li[data-peer-id][data-state=direct], li[data-peer-id][data-state=turn], li[data-peer-id][data-state=server-relay]').length >= {n}"
        );
        self.wait_js(&format!("{n} connected peer(s)"), &script, PAGE_TIMEOUT)
            .await
            .map(|_| ())
    }

    /// Waits until `n` remote peers show `data-state` = `state` (`direct`,
    /// `turn`, `server-relay`, ...).
    pub async fn wait_peers_in_state(&self, n: usize, state: &str) -> Result<()> {
        let script = format!(
            "document.querySelectorAll('li[data-peer-id][data-state={}]').length >= {n}",
            json!(state)
        );
        self.wait_js(&format!("{n} peer(s) {state}"), &script, PAGE_TIMEOUT)
            .await
            .map(|_| ())
    }

    /// The `data-state` of every listed remote peer, in order.
    pub async fn peer_states(&self) -> Result<Vec<String>> {
        let v = self
            .client
            .execute(
                "return [...document.querySelectorAll('li[data-peer-id]')].map(e => e.dataset.state);",
                vec![],
            )
            .await?;
        Ok(serde_json::from_value(v)?)
    }

    /// The visible label of every listed remote peer's state, in order.
    pub async fn peer_state_labels(&self) -> Result<Vec<String>> {
        let v = self
            .client
            .execute(
                "return [...document.querySelectorAll('li[data-peer-id] .peer-state')].map(e => e.textContent);",
                vec![],
            )
            .await?;
        Ok(serde_json::from_value(v)?)
    }

    /// Offers local files through the "Send files" picker.
    pub async fn send_files(&self, paths: &[&Path]) -> Result<()> {
        let input = self
            .find("input[type=file][aria-label='Send files']")
            .await?;
        let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        input.send_keys(&list.join("\n")).await?;
        Ok(())
    }

    /// Waits for a transfer of file `name` in `state` (`offered`, `done`,
    /// ...) for up to `timeout`; returns its `data-hash` (or `yes` before
    /// there is one).
    pub async fn wait_transfer(
        &self,
        name: &str,
        state: &str,
        timeout: Duration,
    ) -> Result<String> {
        let script = format!(
            "(() => {{ const t = [...document.querySelectorAll('[data-transfer-id]')].find(e => e.dataset.name === {n} && e.dataset.state === {s}); return t ? (t.dataset.hash || 'yes') : null; }})()",
            n = json!(name),
            s = json!(state)
        );
        let hash = self
            .wait_js(&format!("transfer {name} {state}"), &script, timeout)
            .await?;
        Ok(hash.as_str().unwrap_or_default().to_owned())
    }

    /// Waits for the offer of file `name` and clicks its Accept button.
    pub async fn accept(&self, name: &str) -> Result<()> {
        self.wait_transfer(name, "offered", PAGE_TIMEOUT).await?;
        let script = format!(
            "const t = [...document.querySelectorAll('[data-transfer-id]')].find(e => e.dataset.name === {n}); \
             const b = [...t.querySelectorAll('button')].find(b => b.textContent.trim() === 'Accept' || b.getAttribute('aria-label') === 'Accept'); \
             b.click(); return true;",
            n = json!(name)
        );
        self.client.execute(&script, vec![]).await?;
        Ok(())
    }

    /// Saves a PNG screenshot of the page.
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        let png = self.client.screenshot().await?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png)?;
        Ok(())
    }

    /// Ends the session and the browser.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill().await;
    }
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
