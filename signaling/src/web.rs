//! The web app, with `/r/{room}` answered by `index.html` (the app routes on
//! the client). It comes from the binary itself ([`Embedded`]: `dist/` as it
//! was when `parlor-server` was compiled, so one file is the whole server) or
//! from `--web-dir`. When there is no `index.html`, `/` and `/r/{room}` get a
//! short page saying how to build it.
//!
//! From a directory, whether the app is built is checked per request, so
//! building it while the server runs needs no restart.
//!
//! Trunk names every asset but `index.html` after its content hash, so those
//! are cached for a year (`immutable`); `index.html` is revalidated each time.
//! Embedded text, JavaScript and WebAssembly files go out gzip-compressed
//! to clients that accept it (the wasm as about 40% of its size),
//! compressed once, on first request.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use rust_embed::RustEmbed;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, Response, StatusCode, header};
use warp::{Filter, Rejection, Reply};

/// `dist/` at the workspace root, read when this crate was compiled
/// (`build.rs` recompiles it whenever `dist/` changes).
#[derive(Debug, RustEmbed)]
#[folder = "../dist"]
#[allow_missing = true]
pub struct Embedded;

/// Where the web app is served from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebSource {
    /// The app compiled into the binary.
    Embedded,
    /// A directory on disk (`--web-dir`).
    Dir(PathBuf),
}

impl WebSource {
    /// `--web-dir` when given; otherwise the app in the binary, or — when this
    /// binary was compiled before the app was built — `default_dir`.
    pub fn choose(web_dir: Option<&Path>, default_dir: &Path) -> Self {
        match web_dir {
            Some(dir) => Self::Dir(dir.to_owned()),
            None if Embedded::get("index.html").is_some() => Self::Embedded,
            None => Self::Dir(default_dir.to_owned()),
        }
    }

    /// For logs: `embedded` or the directory.
    pub fn describe(&self) -> String {
        match self {
            Self::Embedded => "embedded in the binary".to_owned(),
            Self::Dir(dir) => dir.display().to_string(),
        }
    }
}

/// The web app's routes (`/`, `/r/{room}` and its files) from `source`.
pub fn app_routes(source: WebSource) -> BoxedFilter<(Box<dyn Reply>,)> {
    match source {
        WebSource::Embedded => embedded_routes()
            .map(|r| Box::new(r) as Box<dyn Reply>)
            .boxed(),
        WebSource::Dir(dir) => routes(dir).map(|r| Box::new(r) as Box<dyn Reply>).boxed(),
    }
}

/// `/` or `/r/{room}`: pages that show the app.
fn app_page() -> impl Filter<Extract = (), Error = Rejection> + Copy {
    get_or_head().and(
        warp::path::end()
            .or(warp::path!("r" / String)
                .map(|_room: String| ())
                .untuple_one())
            .unify(),
    )
}

/// The embedded app: `index.html` for app pages, files by name, each with
/// its content type, an `ETag` (304 on `If-None-Match`) and cache headers.
fn embedded_routes() -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let conditions = || {
        warp::header::optional::<String>("if-none-match")
            .and(warp::header::optional::<String>("accept-encoding"))
    };
    let index = app_page().and(conditions()).and_then(
        |etag: Option<String>, encodings: Option<String>| async move {
            serve_embedded("index.html", etag.as_deref(), encodings.as_deref())
                .ok_or_else(warp::reject::not_found)
        },
    );
    let files = get_or_head()
        .and(warp::path::tail())
        .and(conditions())
        .and_then(
            |tail: warp::path::Tail, etag: Option<String>, encodings: Option<String>| async move {
                serve_embedded(tail.as_str(), etag.as_deref(), encodings.as_deref())
                    .ok_or_else(warp::reject::not_found)
            },
        );
    index.or(files)
}

/// One embedded file, or `None` when there is no such file; gzip-compressed
/// when `accept_encoding` allows it and the file is worth compressing.
fn serve_embedded(
    name: &str,
    if_none_match: Option<&str>,
    accept_encoding: Option<&str>,
) -> Option<Response<Bytes>> {
    let file = Embedded::get(name)?;
    let mime = if name == "index.html" {
        "text/html"
    } else {
        file.metadata.mimetype()
    };
    let data = match file.data {
        // Compiled in, the data is borrowed for 'static: served without a copy.
        std::borrow::Cow::Borrowed(data) => Bytes::from_static(data),
        std::borrow::Cow::Owned(data) => Bytes::from(data),
    };
    let gzip = (is_compressible(mime) && accept_encoding.is_some_and(accepts_gzip))
        .then(|| gzipped(name, &data))
        .flatten();
    // A compressed copy is another representation: another tag.
    let etag = format!(
        "\"{}{}\"",
        hex(&file.metadata.sha256_hash()[..16]),
        if gzip.is_some() { "-gz" } else { "" }
    );
    let cache = if name == "index.html" {
        "no-cache"
    } else if is_content_hashed(name) {
        "public, max-age=31536000, immutable"
    } else {
        "public, max-age=3600"
    };
    let mut builder = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::CACHE_CONTROL, cache);
    if is_compressible(mime) {
        builder = builder.header(header::VARY, "accept-encoding");
    }
    if if_none_match.is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag)) {
        return builder
            .status(StatusCode::NOT_MODIFIED)
            .body(Bytes::new())
            .ok();
    }
    if name == "index.html" {
        let html = String::from_utf8_lossy(&data);
        builder = builder
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .header("content-security-policy", content_security_policy(&html));
    } else {
        builder = builder.header(
            header::CONTENT_TYPE,
            HeaderValue::from_str(mime)
                .unwrap_or(HeaderValue::from_static("application/octet-stream")),
        );
    }
    match gzip {
        Some(compressed) => builder
            .header(header::CONTENT_ENCODING, "gzip")
            .body(compressed)
            .ok(),
        None => builder.body(data).ok(),
    }
}

/// Whether a file of this type shrinks under gzip (text, JavaScript,
/// WebAssembly, JSON, SVG; not images or fonts, which are compressed).
fn is_compressible(mime: &str) -> bool {
    mime.starts_with("text/")
        || mime.contains("javascript")
        || mime.contains("json")
        || mime == "application/wasm"
        || mime == "image/svg+xml"
}

/// Whether an `Accept-Encoding` value admits gzip (listed, or `*`, and
/// not with `q=0`).
fn accepts_gzip(accept_encoding: &str) -> bool {
    accept_encoding.split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        let coding = parts.next().unwrap_or_default();
        let refused = parts.any(|p| {
            p.strip_prefix("q=")
                .is_some_and(|q| q.parse::<f32>().is_ok_and(|q| q <= 0.0))
        });
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
    })
}

/// The gzip copy of embedded file `name` (whose content is `data`), made on
/// first use and kept; `None` when compressing would not make it smaller.
fn gzipped(name: &str, data: &[u8]) -> Option<Bytes> {
    use std::collections::HashMap;
    use std::io::Write as _;
    use std::sync::{LazyLock, Mutex, PoisonError};

    static COPIES: LazyLock<Mutex<HashMap<String, Option<Bytes>>>> = LazyLock::new(Mutex::default);
    let mut copies = COPIES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(copy) = copies.get(name) {
        return copy.clone();
    }
    let compress = || {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(data).ok()?;
        let compressed = encoder.finish().ok()?;
        (compressed.len() < data.len()).then(|| Bytes::from(compressed))
    };
    let copy = compress();
    copies.insert(name.to_owned(), copy.clone());
    copy
}

/// Whether Trunk put a content hash in this name (`app-0123456789abcdef.js`,
/// `app-0123456789abcdef_bg.wasm`).
fn is_content_hashed(name: &str) -> bool {
    let stem = name.rsplit('/').next().unwrap_or(name);
    let stem = stem.split('.').next().unwrap_or(stem);
    let stem = stem.strip_suffix("_bg").unwrap_or(stem);
    stem.rsplit_once('-')
        .is_some_and(|(_, hash)| hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `GET` or `HEAD`: every route that answers `GET` answers `HEAD` too (uptime
/// checks and load balancers use it); hyper sends a `HEAD` answer's headers
/// without its body.
pub fn get_or_head() -> impl Filter<Extract = (), Error = Rejection> + Copy {
    warp::get().or(warp::head()).unify()
}

/// Filters for `/`, `/r/{room}` and the app's files under `web_dir`.
pub fn routes(web_dir: PathBuf) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let index_html = web_dir.join("index.html");
    let app_page = app_page();

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

    #[tokio::test]
    async fn the_embedded_app_is_served_with_cache_headers_or_the_dist_dir_is_the_fallback() {
        let default_dir = Path::new("/nonexistent/dist");
        let Some(index) = Embedded::get("index.html") else {
            // Compiled before the web app was built (cargo xtask test builds
            // it first): the server falls back to the directory.
            assert_eq!(
                WebSource::choose(None, default_dir),
                WebSource::Dir(default_dir.to_owned())
            );
            return;
        };
        assert_eq!(WebSource::choose(None, default_dir), WebSource::Embedded);
        let dir = Path::new("/srv/app");
        assert_eq!(
            WebSource::choose(Some(dir), default_dir),
            WebSource::Dir(dir.to_owned())
        );

        let filter = app_routes(WebSource::Embedded);
        for path in ["/", "/r/abcdefghijklmnopqrstuv", "/index.html"] {
            let res = warp::test::request().path(path).reply(&filter).await;
            assert_eq!(res.status(), 200, "{path}");
            assert_eq!(res.body().as_ref(), index.data.as_ref(), "{path}");
            assert_eq!(res.headers()["cache-control"], "no-cache");
            assert!(res.headers().contains_key("content-security-policy"));
        }
        let head = warp::test::request()
            .method("HEAD")
            .path("/")
            .reply(&filter)
            .await;
        assert_eq!(head.status(), 200);

        let wasm = Embedded::iter()
            .find(|name| name.ends_with(".wasm"))
            .expect("the app has a wasm module");
        let res = warp::test::request()
            .path(&format!("/{wasm}"))
            .reply(&filter)
            .await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "application/wasm");
        assert_eq!(
            res.headers()["cache-control"],
            "public, max-age=31536000, immutable",
            "{wasm}"
        );
        let etag = res.headers()["etag"].to_str().unwrap().to_owned();
        let again = warp::test::request()
            .path(&format!("/{wasm}"))
            .header("if-none-match", &etag)
            .reply(&filter)
            .await;
        assert_eq!(again.status(), 304);
        assert!(again.body().is_empty());

        // A browser gets the gzip copy, under its own tag.
        let gz = warp::test::request()
            .path(&format!("/{wasm}"))
            .header("accept-encoding", "gzip, deflate, br, zstd")
            .reply(&filter)
            .await;
        assert_eq!(gz.status(), 200);
        assert_eq!(gz.headers()["content-encoding"], "gzip");
        assert_eq!(gz.headers()["vary"], "accept-encoding");
        assert_ne!(gz.headers()["etag"].to_str().unwrap(), etag);
        assert!(gz.body().len() < res.body().len());
        assert_eq!(gunzip(gz.body()), res.body().as_ref());
        assert!(!res.headers().contains_key("content-encoding"));

        for missing in ["/missing.js", "/../Cargo.toml", "/r/a/b"] {
            let res = warp::test::request().path(missing).reply(&filter).await;
            assert_eq!(res.status(), 404, "{missing}");
        }
    }

    fn gunzip(data: &[u8]) -> Vec<u8> {
        use std::io::Read as _;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn gzip_is_used_only_where_the_client_accepts_it_and_it_pays() {
        for yes in [
            "gzip",
            "gzip, deflate, br, zstd",
            "br;q=1.0, GZIP;q=0.5",
            "*",
        ] {
            assert!(accepts_gzip(yes), "{yes}");
        }
        for no in ["", "identity", "br", "gzip;q=0", "gzip; q=0.0", "x-gzip2"] {
            assert!(!accepts_gzip(no), "{no}");
        }
        assert!(is_compressible("application/wasm"));
        assert!(is_compressible("text/javascript"));
        assert!(!is_compressible("image/png"));

        let text = "parlor ".repeat(1000);
        let copy = gzipped("test-text", text.as_bytes()).unwrap();
        assert!(copy.len() < text.len() / 10);
        assert_eq!(gunzip(&copy), text.as_bytes());
        // Incompressible data is served as it is.
        let noise: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
        assert!(gzipped("test-noise", &noise).is_none());
    }

    #[test]
    fn trunk_content_hashes_are_recognised() {
        assert!(is_content_hashed("parlor-client-wasm-abf2c1ef61f4c3cf.js"));
        assert!(is_content_hashed(
            "parlor-client-wasm-abf2c1ef61f4c3cf_bg.wasm"
        ));
        assert!(is_content_hashed("style-7ef31493461d688d.css"));
        assert!(!is_content_hashed("icon.svg"));
        assert!(!is_content_hashed("manifest.webmanifest"));
        assert!(!is_content_hashed("app-notahexhash000.js"));
    }

    #[test]
    fn the_web_dir_is_escaped() {
        assert!(not_built_page(Path::new("<b>")).contains("&lt;b&gt;"));
    }
}
