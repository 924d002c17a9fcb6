//! Yew components. They render [`crate::state::RoomState`] and turn user
//! actions into calls on the [`crate::room::RoomHandle`]; no browser glue or
//! protocol logic lives here.

mod chat;
mod invite;
mod peers;
mod room_page;
mod transfers;

use parlor_protocol::{RoomId, RoomKey};
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
    let body = match route() {
        Route::Home => html! { <Home /> },
        Route::Room { room, key, relay } => {
            let (relay, relay_error) = match relay {
                Ok(mode) => (mode, None),
                Err(e) => (RelayMode::Auto, Some(AttrValue::from(e))),
            };
            html! { <room_page::RoomPage {room} room_key={key} {relay} {relay_error} /> }
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

/// The landing page: one button that makes a room and goes there.
#[function_component(Home)]
pub fn home() -> Html {
    let t = use_context::<LangCtx>().map_or(Lang::En, |c| c.lang).t();
    let onclick = Callback::from(|_| {
        let room = RoomId::from_random(random_bytes());
        let key = RoomKey::from_random(random_bytes());
        if let Some(w) = web_sys::window() {
            // The key stays in the fragment: browsers never send it to the server.
            let _ = w.location().set_href(&format!("/r/{room}#{key}"));
        }
    });
    html! {
        <main class="home">
            <header class="top"><h1>{ "Parlor" }</h1><LangSwitch /></header>
            <p class="tagline">{ t.tagline }</p>
            <button type="button" class="primary big" {onclick}>{ t.start_room }</button>
            <p class="note">{ t.home_note }</p>
        </main>
    }
}
