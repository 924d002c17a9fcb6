//! The list of remote peers with their connection state.

use yew::prelude::*;

use super::LangCtx;
use crate::i18n::Lang;
use crate::state::{LinkState, PeerView};

/// Props of [`Peers`].
#[derive(Properties, PartialEq)]
pub struct PeersProps {
    /// Remote peers.
    pub peers: Vec<PeerView>,
}

/// One `<li data-peer-id data-state>` per remote peer.
#[function_component(Peers)]
pub fn peers(props: &PeersProps) -> Html {
    let t = use_context::<LangCtx>().map_or(Lang::En, |c| c.lang).t();
    let items = props.peers.iter().map(|p| {
        let state = match p.state {
            LinkState::Connecting => t.connecting,
            LinkState::Direct => t.direct,
            LinkState::Turn => t.turn,
            LinkState::ServerRelay => t.server_relay,
            LinkState::Failed => t.failed,
        };
        let name = if p.name.is_empty() { format!("#{}", p.id) } else { p.name.clone() };
        html! {
            <li key={p.id.clone()} class={classes!("peer", p.state.as_str())} data-peer-id={p.id.clone()}
                data-state={p.state.as_str()} data-rtt-ms={p.rtt_ms.map(|r| r.to_string())}>
                <span class="dot" aria-hidden="true"></span>
                <span class="peer-name">{ name }</span>
                <span class="peer-state">{ state }</span>
                if let Some(rtt) = p.rtt_ms {
                    <span class="rtt">{ format!("{rtt} ms") }</span>
                }
            </li>
        }
    });
    html! {
        <section class="panel peers" aria-labelledby="peers-h">
            <h2 id="peers-h">{ t.peers }</h2>
            if props.peers.is_empty() {
                <p class="note">{ t.nobody }</p>
            }
            <ul class="peer-list">{ for items }</ul>
        </section>
    }
}
