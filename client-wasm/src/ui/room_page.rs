//! The room page: creates the driver for the room, owns the view store, and
//! lays out the panels.

use parlor_protocol::{RoomId, RoomKey, ShortCode};
use yew::prelude::*;

use super::chat::Chat;
use super::invite::{Invite, NameInput};
use super::peers::Peers;
use super::transfers::Transfers;
use super::{LangCtx, LangSwitch};
use crate::i18n::Lang;
use crate::params::RelayMode;
use crate::room::RoomHandle;
use crate::state::{Action, CodeStatus, RoomState, ServerStatus};

/// Props of [`RoomPage`].
#[derive(Properties, PartialEq)]
pub struct RoomProps {
    /// The room from the URL.
    pub room: RoomId,
    /// The URL's `#KEY`, when it carried a valid one.
    pub room_key: Option<RoomKey>,
    /// Joined by short code: the key is agreed with the other peer.
    pub code: Option<ShortCode>,
    /// The URL's `?relay=`.
    pub relay: RelayMode,
    /// Why the URL's `?relay=` was ignored.
    pub relay_error: Option<AttrValue>,
}

/// One room: invite, people, chat, files.
#[function_component(RoomPage)]
pub fn room_page(props: &RoomProps) -> Html {
    let t = use_context::<LangCtx>().map_or(Lang::En, |c| c.lang).t();
    let state = use_reducer(RoomState::default);
    let handle = use_state(|| None::<RoomHandle>);
    {
        let dispatcher = state.dispatcher();
        let handle = handle.clone();
        use_effect_with(
            (
                props.room.clone(),
                props.room_key.clone(),
                props.code.clone(),
                props.relay,
            ),
            move |(room, key, code, relay)| {
                let h =
                    RoomHandle::start(room.clone(), key.clone(), code.clone(), *relay, move |a| {
                        dispatcher.dispatch(a)
                    });
                handle.set(Some(h.clone()));
                move || h.shutdown()
            },
        );
    }
    // The invite link without this page's own `?relay=` choice.
    let link = web_sys::window()
        .map(|w| {
            let l = w.location();
            let part = |r: Result<String, _>| r.unwrap_or_default();
            format!(
                "{}{}{}",
                part(l.origin()),
                part(l.pathname()),
                part(l.hash())
            )
        })
        .unwrap_or_default();

    let on_drop = {
        let handle = handle.clone();
        Callback::from(move |e: DragEvent| {
            e.prevent_default();
            let Some(list) = e.data_transfer().and_then(|d| d.files()) else {
                return;
            };
            let files: Vec<web_sys::File> =
                (0..list.length()).filter_map(|i| list.item(i)).collect();
            if let Some(h) = &*handle {
                h.send_files(files, None);
            }
        })
    };
    let on_dragover = Callback::from(|e: DragEvent| e.prevent_default());

    let server = match &state.server {
        ServerStatus::Connecting => t.server_connecting.to_owned(),
        ServerStatus::Joined => t.server_joined.to_owned(),
        ServerStatus::Reconnecting { in_secs, attempt } => {
            format!("{} ({in_secs} s, #{attempt})", t.server_reconnecting)
        }
        ServerStatus::Failed => t.server_failed.to_owned(),
    };
    let server_class = match &state.server {
        ServerStatus::Joined => "server ok",
        ServerStatus::Failed => "server bad",
        _ => "server wait",
    };

    let notices = state.notices.iter().map(|n| {
        let id = n.id;
        let dispatcher = state.dispatcher();
        let onclick = Callback::from(move |_| dispatcher.dispatch(Action::Dismiss(id)));
        html! {
            <div class="alert" role="alert" key={id}>
                <span>{ &n.text }</span>
                <button type="button" class="dismiss" aria-label="Dismiss" title={t.dismiss} {onclick}>{ "×" }</button>
            </div>
        }
    });

    let code_status = match &state.code {
        CodeStatus::Off => Html::default(),
        CodeStatus::Waiting => {
            html! { <p class="code-status" data-code-status="waiting">{ t.code_waiting }</p> }
        }
        CodeStatus::Checking => {
            html! { <p class="code-status" data-code-status="checking">{ t.code_checking }</p> }
        }
        CodeStatus::Matched => {
            html! { <p class="code-status" data-code-status="matched">{ t.code_matched }</p> }
        }
        CodeStatus::Mismatch => html! {
            <div class="alert" role="alert" data-code-status="mismatch">{ t.code_mismatch }</div>
        },
        CodeStatus::Failed(why) => html! {
            <div class="alert" role="alert" data-code-status="failed">{ format!("{} {why}", t.code_failed) }</div>
        },
    };

    // Named like the messages: the display name, else `#ID`.
    let typing: Vec<String> = state
        .typing
        .iter()
        .map(|id| match state.peers.iter().find(|p| p.id == *id) {
            Some(p) if !p.name.is_empty() => p.name.clone(),
            _ => format!("#{id}"),
        })
        .collect();

    html! {
        <main class="room" data-peer-id={state.me.clone()} ondrop={on_drop} ondragover={on_dragover}>
            <header class="top">
                <h1><a href="/">{ "Parlor" }</a></h1>
                <span class={server_class} aria-live="polite">{ server }</span>
                <LangSwitch />
            </header>
            <div class="alerts">
                if props.room_key.is_none() && props.code.is_none() {
                    <div class="alert" role="alert">{ t.no_key }</div>
                }
                { code_status }
                if let Some(e) = &props.relay_error {
                    <div class="alert" role="alert">{ e.clone() }</div>
                }
                { for notices }
            </div>
            <div class="layout">
                <aside class="side">
                    <Invite link={link} />
                    <NameInput handle={(*handle).clone()} />
                    <Peers peers={state.peers.clone()} />
                </aside>
                <Chat messages={state.messages.clone()} typing={typing} handle={(*handle).clone()} />
                <Transfers transfers={state.transfers.clone()} peers={state.peers.clone()} handle={(*handle).clone()} />
            </div>
        </main>
    }
}
