//! The web app: static files from `--web-dir`, with `/r/{room}` answered by
//! `index.html` (the app routes on the client). When the directory has no
//! `index.html`, `/` and `/r/{room}` get a short page saying how to build it.
//!
//! Whether the app is built is checked per request, so building it while the
//! server runs needs no restart.

use std::path::{Path, PathBuf};

use warp::{Filter, Rejection, Reply};

/// `GET` or `HEAD`: every route that answers `GET` answers `HEAD` too (uptime
/// checks and load balancers use it); hyper sends a `HEAD` answer's headers
/// without its body.
pub fn get_or_head() -> impl Filter<Extract = (), Error = Rejection> + Copy {
    warp::get().or(warp::head()).unify()
}

/// Filters for `/`, `/r/{room}` and the app's files under `web_dir`.
pub fn routes(web_dir: PathBuf) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let index_html = web_dir.join("index.html");

    // `/` or `/r/{room}`: pages that show the app.
    let app_page = get_or_head().and(
        warp::path::end()
            .or(warp::path!("r" / String)
                .map(|_room: String| ())
                .untuple_one())
            .unify(),
    );

    let built = {
        let index_html = index_html.clone();
        warp::any()
            .and_then(move || {
                let index_html = index_html.clone();
                async move {
                    if is_file(&index_html).await {
                        Ok(())
                    } else {
                        Err(warp::reject::not_found())
                    }
                }
            })
            .untuple_one()
    };

    let app_index = {
        let index_html = index_html.clone();
        app_page
            .and(built.clone())
            .and_then(move || serve_index(index_html.clone()))
    };
    let app_files = get_or_head().and(built).and(warp::fs::dir(web_dir.clone()));
    let page = not_built_page(&web_dir);
    let not_built = app_page.map(move || warp::reply::html(page.clone()));

    app_index.or(app_files).or(not_built)
}

/// `index.html` with a Content-Security-Policy that admits exactly its
/// own inline scripts (Trunk's loader and the WebAssembly check) by hash.
async fn serve_index(path: PathBuf) -> Result<impl Reply, Rejection> {
    let html = tokio::fs::read_to_string(&path)
        .await
        .map_err(|_| warp::reject::not_found())?;
    let csp = content_security_policy(&html);
    Ok(warp::reply::with_header(
        warp::reply::html(html),
        "content-security-policy",
        csp,
    ))
}

/// The app's Content-Security-Policy: scripts only from this origin plus
/// the page's inline scripts by SHA-256 hash, WebAssembly compilation
/// (`'wasm-unsafe-eval'`, not `'unsafe-eval'`), connections (fetch and the
/// signaling WebSocket) only to this origin, no plugins, no framing, no
/// `<base>` or form targets elsewhere. Inline styles stay allowed: the app
/// sets progress-bar widths with `style`.
pub fn content_security_policy(html: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let mut scripts = String::new();
    for hash in inline_scripts(html).map(|body| sha2::Sha256::digest(body.as_bytes())) {
        let b64 = base64::engine::general_purpose::STANDARD.encode(hash);
        scripts.push_str(&format!(" 'sha256-{b64}'"));
    }
    format!(
        "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'{scripts}; \
         style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; media-src 'self' blob:; \
         connect-src 'self'; worker-src 'self' blob:; object-src 'none'; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'"
    )
}

/// The bodies of `<script>` elements without a `src`.
fn inline_scripts(html: &str) -> impl Iterator<Item = &str> {
    let mut rest = html;
    std::iter::from_fn(move || {
        loop {
            let start = rest.find("<script")?;
            let after = &rest[start..];
            let tag_end = after.find('>')?;
            let tag = &after[..tag_end];
            let body_start = start + tag_end + 1;
            let body_len = rest[body_start..].find("</script>")?;
            let body = &rest[body_start..body_start + body_len];
            rest = &rest[body_start + body_len..];
            if !tag.contains("src=") {
                return Some(body);
            }
        }
    })
}

/// Headers on every response: no MIME sniffing, no referrer (the room id
/// is in the path), no framing, a separate browsing context group, and no
/// camera, microphone or location.
pub fn security_headers() -> warp::http::HeaderMap {
    use warp::http::header::{self, HeaderValue};
    let mut headers = warp::http::HeaderMap::new();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(), microphone=(), geolocation=(), payment=()"),
    );
    headers
}

async fn is_file(path: &Path) -> bool {
    tokio::fs::metadata(path)
        .await
        .map(|m| m.is_file())
        .unwrap_or(false)
}

/// The page served while the web app is not built.
pub fn not_built_page(web_dir: &Path) -> String {
    let dir = html_escape(&web_dir.display().to_string());
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Parlor: web app not built</title>
</head>
<body style="font-family: system-ui, sans-serif; max-width: 40em; margin: 3em auto; padding: 0 1em; line-height: 1.5">
<h1>Parlor</h1>
<p>The server is running, but the web app is not built yet: there is no
<code>index.html</code> in <code>{dir}</code>.</p>
<p>To build the web app and start the server, run <code>cargo xtask run</code>
in the Parlor repository; see the README. To serve an app built elsewhere,
start the server with <code>--web-dir DIR</code> (or set <code>PARLOR_WEB_DIR</code>).</p>
<p>Signaling already works: command-line peers can meet through <code>/ws</code>.</p>
</body>
</html>
"#
    )
}

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn serves_the_not_built_page_without_index_html() {
        let dir = tempfile::tempdir().unwrap();
        let filter = routes(dir.path().to_owned());
        for path in ["/", "/r/abcdefghijklmnopqrstuv"] {
            let res = warp::test::request().path(path).reply(&filter).await;
            assert_eq!(res.status(), 200, "{path}");
            let body = String::from_utf8_lossy(res.body());
            assert!(
                body.contains("not built yet") && body.contains("cargo xtask run"),
                "{body}"
            );
        }
        let res = warp::test::request().path("/app.js").reply(&filter).await;
        assert_eq!(res.status(), 404);
    }

    #[tokio::test]
    async fn serves_index_html_for_app_routes_and_files_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), "<p>the app</p>").unwrap();
        std::fs::write(dir.path().join("app.js"), "console.log(1)").unwrap();
        let filter = routes(dir.path().to_owned());
        for path in ["/", "/r/abcdefghijklmnopqrstuv", "/index.html"] {
            let res = warp::test::request().path(path).reply(&filter).await;
            assert_eq!(res.status(), 200, "{path}");
            assert_eq!(res.body().as_ref(), b"<p>the app</p>", "{path}");
        }
        let res = warp::test::request().path("/app.js").reply(&filter).await;
        assert_eq!(res.body().as_ref(), b"console.log(1)");
        assert!(
            !warp::test::request()
                .path("/missing.js")
                .matches(&filter)
                .await
        );
        assert!(!warp::test::request().path("/r/a/b").matches(&filter).await);
    }

    #[test]
    fn the_policy_admits_exactly_the_inline_scripts() {
        use base64::Engine as _;
        use sha2::Digest as _;
        let html = r#"<script type="module">boot()</script><script src="/a.js"></script>
            <script>
              check()
            </script>"#;
        let csp = content_security_policy(html);
        let hash = |s: &str| {
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(s.as_bytes()))
        };
        assert!(
            csp.contains(&format!("'sha256-{}'", hash("boot()"))),
            "{csp}"
        );
        assert!(
            csp.contains(&format!(
                "'sha256-{}'",
                hash("\n              check()\n            ")
            )),
            "{csp}"
        );
        assert_eq!(csp.matches("'sha256-").count(), 2, "{csp}");
        assert!(!csp.contains("unsafe-eval'") || csp.contains("'wasm-unsafe-eval'"));
        assert!(!csp.contains("'unsafe-eval'"));
        assert!(csp.contains("frame-ancestors 'none'"));
    }

    #[tokio::test]
    async fn app_pages_carry_the_policy() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), "<script>x()</script>").unwrap();
        let filter = routes(dir.path().to_owned());
        let res = warp::test::request().path("/r/abc").reply(&filter).await;
        let csp = res.headers()["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self' 'wasm-unsafe-eval' 'sha256-"),
            "{csp}"
        );
    }

    #[test]
    fn the_web_dir_is_escaped() {
        assert!(not_built_page(Path::new("<b>")).contains("&lt;b&gt;"));
    }
}
