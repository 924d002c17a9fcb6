//! The files panel: pickers (files, folder), target choice, and one entry
//! per transfer with progress and its buttons.

use yew::prelude::*;

use super::LangCtx;
use crate::i18n::Lang;
use crate::room::RoomHandle;
use crate::state::{Direction, PeerView, TransferState, TransferView};
use crate::util::{human_bytes, human_duration};

/// Props of [`Transfers`].
#[derive(Properties, PartialEq)]
pub struct TransfersProps {
    /// Transfers, oldest first.
    pub transfers: Vec<TransferView>,
    /// Remote peers (for the target choice).
    pub peers: Vec<PeerView>,
    /// The room driver (absent for the first render).
    pub handle: Option<RoomHandle>,
}

fn picked(e: &Event) -> Vec<web_sys::File> {
    let input: web_sys::HtmlInputElement = e.target_unchecked_into();
    let files = input
        .files()
        .map(|list| (0..list.length()).filter_map(|i| list.item(i)).collect())
        .unwrap_or_default();
    // Let the same file be picked again later.
    input.set_value("");
    files
}

/// Pickers and the transfer list.
#[function_component(Transfers)]
pub fn transfers(props: &TransfersProps) -> Html {
    let t = use_context::<LangCtx>().map_or(Lang::En, |c| c.lang).t();
    let target = use_state(String::new);
    let on_pick = {
        let handle = props.handle.clone();
        let target = target.clone();
        Callback::from(move |e: Event| {
            let files = picked(&e);
            let to = (!target.is_empty()).then(|| (*target).clone());
            if let Some(h) = &handle {
                h.send_files(files, to);
            }
        })
    };
    let on_target = {
        let target = target.clone();
        Callback::from(move |e: Event| {
            target.set(
                e.target_unchecked_into::<web_sys::HtmlSelectElement>()
                    .value(),
            );
        })
    };
    let ready: Vec<&PeerView> = props.peers.iter().filter(|p| p.files_ready).collect();
    let items = props.transfers.iter().rev().map(|tr| {
        let h = props.handle.clone();
        html! { <TransferItem key={format!("{}-{}", tr.peer, tr.id)} transfer={tr.clone()} handle={h} /> }
    });
    html! {
        <section class="panel files" aria-labelledby="files-h">
            <h2 id="files-h">{ t.files }</h2>
            <div class="row pickers">
                <input id="file-input" class="visually-hidden" type="file" multiple=true
                    aria-label="Send files" onchange={on_pick.clone()} />
                <label for="file-input" class="button primary">{ t.send_files }</label>
                <input id="folder-input" class="visually-hidden" type="file" multiple=true webkitdirectory=true
                    aria-label="Send a folder" onchange={on_pick} />
                <label for="folder-input" class="button">{ t.send_folder }</label>
                <label class="target">
                    <span>{ t.send_to }</span>
                    <select aria-label="Send to" onchange={on_target}>
                        <option value="" selected={target.is_empty()}>{ t.everyone }</option>
                        { for ready.iter().map(|p| html! {
                            <option value={p.id.clone()} selected={*target == p.id}>
                                { if p.name.is_empty() { format!("#{}", p.id) } else { p.name.clone() } }
                            </option>
                        }) }
                    </select>
                </label>
            </div>
            <p class="note">{ t.drop_hint }</p>
            <ul class="transfer-list">{ for items }</ul>
        </section>
    }
}

/// Props of [`TransferItem`].
#[derive(Properties, PartialEq)]
pub struct ItemProps {
    /// The transfer.
    pub transfer: TransferView,
    /// The room driver.
    pub handle: Option<RoomHandle>,
}

/// One transfer with its progress and buttons.
#[function_component(TransferItem)]
pub fn transfer_item(props: &ItemProps) -> Html {
    let t = use_context::<LangCtx>().map_or(Lang::En, |c| c.lang).t();
    let tr = &props.transfer;
    let call = |f: fn(&RoomHandle, String, String, Direction)| {
        let h = props.handle.clone();
        let (peer, id, dir) = (tr.peer.clone(), tr.id.clone(), tr.direction);
        Callback::from(move |_| {
            if let Some(h) = &h {
                f(h, peer.clone(), id.clone(), dir);
            }
        })
    };
    let on_accept = call(|h, p, i, _| h.accept(p, i));
    let on_decline = call(|h, p, i, _| h.decline(p, i));
    let on_cancel = call(|h, p, i, d| h.cancel(p, i, d));
    let state = match tr.state {
        TransferState::Offered => t.st_offered,
        TransferState::Waiting => t.st_waiting,
        TransferState::Active => t.st_active,
        TransferState::Done => t.st_done,
        TransferState::Failed => t.st_failed,
        TransferState::Cancelled => t.st_cancelled,
        TransferState::Declined => t.st_declined,
    };
    let (dir, dir_class) = match tr.direction {
        Direction::Send => (t.to, "send"),
        Direction::Receive => (t.from, "receive"),
    };
    let peer = if tr.peer_name.is_empty() {
        format!("#{}", tr.peer)
    } else {
        tr.peer_name.clone()
    };
    let note = tr.note.as_deref().map(|n| match n {
        "hashing" => t.hashing.to_owned(),
        "saving" => t.saving.to_owned(),
        "away" => t.away.replace("{peer}", &peer),
        "resuming" => t.resuming.to_owned(),
        _ => String::new(),
    });
    let speed = (tr.state == TransferState::Active && tr.bytes_per_sec > 0.0).then(|| {
        let eta = tr
            .eta_ms
            .map(|e| format!(", {} {}", human_duration(e), t.left))
            .unwrap_or_default();
        format!("{}/s{eta}", human_bytes(tr.bytes_per_sec))
    });
    let cancellable =
        matches!(tr.state, TransferState::Active | TransferState::Waiting) && tr.url.is_none();
    html! {
        <li class={classes!("transfer", dir_class, tr.state.as_str())} data-transfer-id={tr.id.clone()}
            data-direction={dir_class} data-name={tr.name.clone()} data-size={tr.size.to_string()}
            data-done={tr.done.to_string()} data-state={tr.state.as_str()} data-hash={tr.hash.clone()}
            data-resumed-from={tr.resumed_from.map(|o| o.to_string())}
            data-sent={(tr.direction == Direction::Send).then(|| tr.sent.to_string())}
            data-stored={(tr.direction == Direction::Receive).then(|| tr.stored.to_string())}>
            <div class="transfer-head">
                <span class="file-name">{ &tr.name }</span>
                <span class="size">{ human_bytes(tr.size as f64) }</span>
            </div>
            <div class="transfer-meta">
                <span>{ format!("{dir} {peer}") }</span>
                <span class="state">{ state }</span>
                if let Some(n) = note { <span class="note">{ n }</span> }
                if let Some(s) = speed { <span class="speed">{ s }</span> }
            </div>
            if matches!(tr.state, TransferState::Active | TransferState::Done) {
                <progress max={tr.size.max(1).to_string()} value={tr.done.to_string()}
                    aria-label={format!("Progress of {}", tr.name)}></progress>
            }
            if let Some(e) = &tr.error {
                <p class="error">{ e }</p>
            }
            <div class="row">
                if tr.state == TransferState::Offered {
                    <button type="button" class="primary" aria-label="Accept" onclick={on_accept}>{ t.accept }</button>
                    <button type="button" aria-label="Decline" onclick={on_decline}>{ t.decline }</button>
                }
                if cancellable {
                    <button type="button" aria-label="Cancel" onclick={on_cancel}>{ t.cancel }</button>
                }
                if let Some(url) = &tr.url {
                    <a class="button primary" href={url.clone()} download={tr.name.clone()}
                        aria-label={format!("Save {}", tr.name)}>{ t.save }</a>
                }
            </div>
        </li>
    }
}
