//! Yew components. They render [`crate::state::RoomState`] and turn user
//! actions into calls on the [`crate::room::RoomHandle`]; no browser glue or
//! protocol logic lives here.

mod chat;
mod invite;
mod peers;
mod room_page;
mod transfers;

use parlor_protocol::{CodeError, RoomId, RoomKey, ShortCode};
use yew::prelude::*;

use crate::i18n::Lang;
use crate::params::RelayMode;
use crate::util::random_bytes;

/// The UI language and a way to switch it, shared by context.
#[derive(Clone, Debug, PartialEq)]
pub struct LangCtx {
    /// Current language.
    pub lang: Lang,
    /// Switch to another language.
    pub set: Callback<Lang>,
}

/// What the URL asks for.
enum Route {
    Home,
    Room {
        room: RoomId,
        key: Option<RoomKey>,
        relay: Result<RelayMode, String>,
    },
    BadRoom,
    /// Joined by short code on the home page.
    Code {
        room: RoomId,
        code: ShortCode,
    },
}

fn route() -> Route {
    let Some(location) = web_sys::window().map(|w| w.location()) else {
        return Route::Home;
    };
    let path = location.pathname().unwrap_or_default();
    let Some(room) = path.strip_prefix("/r/") else {
        return Route::Home;
    };
    let room = room.trim_end_matches('/');
    let key = location.hash().unwrap_or_default();
    match RoomId::parse(room) {
        Ok(room) => Route::Room {
            room,
            key: RoomKey::parse(key.trim_start_matches('#')),
            relay: RelayMode::from_query(&location.search().unwrap_or_default()),
        },
        Err(_) => Route::BadRoom,
    }
}

/// The whole app: home page or room page, by URL.
#[function_component(App)]
pub fn app() -> Html {
    let lang = use_state(Lang::detect);
    let ctx = LangCtx {
        lang: *lang,
        set: {
            let lang = lang.clone();
            Callback::from(move |l: Lang| {
                crate::storage::set_language(l.code());
                if let Some(el) = web_sys::window()
                    .and_then(|w| w.document())
                    .and_then(|d| d.document_element())
                {
                    let _ = el.set_attribute("lang", l.code());
                }
                lang.set(l);
            })
        },
    };
    // A room joined by short code: its key is agreed with the other peer,
    // not taken from the URL (which changes once the key is known).
    let code_join = use_state(|| None::<(RoomId, ShortCode)>);
    let on_code = {
        let code_join = code_join.clone();
        Callback::from(move |joined: (RoomId, ShortCode)| code_join.set(Some(joined)))
    };
    let routed = match &*code_join {
        Some((room, code)) => Route::Code {
            room: room.clone(),
            code: code.clone(),
        },
        None => route(),
    };
    let body = match routed {
        Route::Home => html! { <Home {on_code} /> },
        Route::Code { room, code } => html! {
            <room_page::RoomPage {room} room_key={None::<RoomKey>} code={Some(code)}
                relay={RelayMode::Auto} relay_error={None::<AttrValue>} />
        },
        Route::Room { room, key, relay } => {
            let (relay, relay_error) = match relay {
                Ok(mode) => (mode, None),
                Err(e) => (RelayMode::Auto, Some(AttrValue::from(e))),
            };
            html! { <room_page::RoomPage {room} room_key={key} code={None::<ShortCode>} {relay} {relay_error} /> }
        }
        Route::BadRoom => {
            let t = lang.t();
            html! {
                <main class="home">
                    <p role="alert" class="alert">{ t.bad_link }</p>
                    <a href="/">{ t.home_link }</a>
                </main>
            }
        }
    };
    html! { <ContextProvider<LangCtx> context={ctx}>{ body }</ContextProvider<LangCtx>> }
}

/// The language switch button.
#[function_component(LangSwitch)]
pub fn lang_switch() -> Html {
    let Some(ctx) = use_context::<LangCtx>() else {
        return Html::default();
    };
    let other = ctx.lang.other();
    let onclick = ctx.set.reform(move |_| other);
    html! {
        <button type="button" class="lang" {onclick} lang={other.code()} aria-label="Switch language" title={other.t().lang_name}>
            // ASCII, so the switch reads right even without CJK fonts.
            { other.code().to_uppercase() }
        </button>
    }
}

/// Props of [`Home`].
#[derive(Debug, Properties, PartialEq)]
pub struct HomeProps {
    /// A code was typed and its nameplate opened: join that room.
    pub on_code: Callback<(RoomId, ShortCode)>,
}

/// The landing page: one button that makes a room and goes there, and a
/// field for a short code from someone else (`parlor send --code`).
#[function_component(Home)]
pub fn home(props: &HomeProps) -> Html {
    let t = use_context::<LangCtx>().map_or(Lang::En, |c| c.lang).t();
    let onclick = Callback::from(|_| {
        let room = RoomId::from_random(random_bytes());
        let key = RoomKey::from_random(random_bytes());
        if let Some(w) = web_sys::window() {
            // The key stays in the fragment: browsers never send it to the server.
            let _ = w.location().set_href(&format!("/r/{room}#{key}"));
        }
    });
    let typed = use_state(String::new);
    let error = use_state(|| None::<String>);
    let busy = use_state(|| false);
    let oninput = {
        let typed = typed.clone();
        Callback::from(move |e: InputEvent| {
            let input: web_sys::HtmlInputElement = e.target_unchecked_into();
            typed.set(input.value());
        })
    };
    let onsubmit = {
        let (typed, error, busy, on_code) = (
            typed.clone(),
            error.clone(),
            busy.clone(),
            props.on_code.clone(),
        );
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            if *busy {
                return;
            }
            // Checked before the server is asked: a typo must not use up the code.
            let code = match ShortCode::parse(&typed) {
                Ok(code) => code,
                Err(CodeError::UnknownWord(_)) => {
                    return error.set(Some(t.code_unknown_word.to_owned()));
                }
                Err(_) => return error.set(Some(t.code_bad_format.to_owned())),
            };
            error.set(None);
            busy.set(true);
            let (error, busy, on_code) = (error.clone(), busy.clone(), on_code.clone());
            wasm_bindgen_futures::spawn_local(async move {
                match open_code(&code).await {
                    Ok(room) => on_code.emit((room, code)),
                    Err(OpenError::NotFound) => error.set(Some(t.code_not_found.to_owned())),
                    Err(OpenError::Other(why)) => {
                        error.set(Some(format!("{} {why}", t.code_error)));
                    }
                }
                busy.set(false);
            });
        })
    };
    html! {
        <main class="home">
            <header class="top"><h1>{ "Parlor" }</h1><LangSwitch /></header>
            <p class="tagline">{ t.tagline }</p>
            <button type="button" class="primary big" {onclick}>{ t.start_room }</button>
            <p class="note">{ t.home_note }</p>
            <form class="code-join" {onsubmit}>
                <label for="code-input">{ t.have_code }</label>
                <div class="row">
                    <input id="code-input" type="text" name="code" autocomplete="off"
                        autocapitalize="none" spellcheck="false" aria-label="Code"
                        placeholder={t.code_placeholder} value={(*typed).clone()} {oninput} />
                    <button type="submit" class="primary" disabled={*busy} aria-label="Join with code">{ t.join }</button>
                </div>
                if let Some(e) = &*error {
                    <p role="alert" class="alert code-error">{ e }</p>
                }
            </form>
        </main>
    }
}

/// Why a code's nameplate could not be opened.
enum OpenError {
    /// Used already, expired, or a wrong number.
    NotFound,
    /// Anything else (network, server), with the reason.
    Other(String),
}

/// `POST /api/code/N/open` on this page's server: the room, once.
async fn open_code(code: &ShortCode) -> Result<RoomId, OpenError> {
    let url = format!("/api/code/{}/open", code.nameplate);
    let response = gloo::net::http::Request::post(&url)
        .send()
        .await
        .map_err(|e| OpenError::Other(e.to_string()))?;
    if response.status() == 404 {
        return Err(OpenError::NotFound);
    }
    let body: serde_json::Value = response
        .json()
        .await
        .map_err(|e| OpenError::Other(e.to_string()))?;
    if !response.ok() {
        let why = body["error"].as_str().unwrap_or("server error").to_owned();
        return Err(OpenError::Other(why));
    }
    body["room"]
        .as_str()
        .and_then(|r| RoomId::parse(r).ok())
        .ok_or_else(|| OpenError::Other("the server's answer has no room".into()))
}
