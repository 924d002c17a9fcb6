//! Small browser helpers shared by the other modules.

use parlor_core::Millis;
use wasm_bindgen::{JsCast as _, JsValue};

/// Milliseconds on the page's monotonic clock (`performance.now()`), the
/// `now` fed to `parlor-core`.
pub fn now_ms() -> Millis {
    web_sys::window()
        .and_then(|w| w.performance())
        .map_or(0.0, |p| p.now())
        .max(0.0) as Millis
}

/// Wall-clock milliseconds since the Unix epoch (`Date.now()`).
pub fn wall_ms() -> u64 {
    js_sys::Date::now().max(0.0) as u64
}

/// `N` cryptographically random bytes (`crypto.getRandomValues`), falling back
/// to `Math.random` only if the Crypto API is missing.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    let filled = web_sys::window()
        .and_then(|w| w.crypto().ok())
        .is_some_and(|c| c.get_random_values_with_u8_array(&mut out).is_ok());
    if !filled {
        for b in &mut out {
            *b = (js_sys::Math::random() * 256.0) as u8;
        }
    }
    out
}

/// `N` bytes from `crypto.getRandomValues`, or `None` without the Crypto
/// API (for secrets and nonces, where `Math.random` will not do).
pub fn crypto_random_bytes<const N: usize>() -> Option<[u8; N]> {
    let mut out = [0u8; N];
    let crypto = web_sys::window()?.crypto().ok()?;
    crypto.get_random_values_with_u8_array(&mut out).ok()?;
    Some(out)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A readable message for a JS exception or rejection value.
pub fn js_error(err: &JsValue) -> String {
    if let Some(e) = err.dyn_ref::<js_sys::Error>() {
        return String::from(e.message());
    }
    if let Some(s) = err.as_string() {
        return s;
    }
    format!("{err:?}")
}

/// Reads property `key` of `obj` (`undefined` when missing).
pub fn get(obj: &JsValue, key: &str) -> JsValue {
    js_sys::Reflect::get(obj, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

/// Writes property `key` of `obj`, ignoring failures on frozen objects.
pub fn set(obj: &JsValue, key: &str, value: &JsValue) {
    let _ = js_sys::Reflect::set(obj, &JsValue::from_str(key), value);
}

/// Whether the global object has property `name` (feature detection).
pub fn has_global(name: &str) -> bool {
    let global = js_sys::global();
    js_sys::Reflect::has(&global, &JsValue::from_str(name)).unwrap_or(false)
}

/// Logs a warning to the browser console.
pub fn warn(msg: &str) {
    web_sys::console::warn_1(&JsValue::from_str(msg));
}

/// Human-readable byte count (`1.5 MB`).
pub fn human_bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `m:ss` (or `h:mm:ss`) for a duration in milliseconds.
pub fn human_duration(ms: u64) -> String {
    let s = ms.div_ceil(1000);
    let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

/// Local `HH:MM` of a wall-clock time in epoch milliseconds.
pub fn clock_time(epoch_ms: u64) -> String {
    let d = js_sys::Date::new(&JsValue::from_f64(epoch_ms as f64));
    format!("{:02}:{:02}", d.get_hours(), d.get_minutes())
}
