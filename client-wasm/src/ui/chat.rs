//! The chat panel: messages and the message box.

use yew::prelude::*;

use super::LangCtx;
use crate::i18n::Lang;
use crate::room::RoomHandle;
use crate::state::{MessageView, Status};
use crate::util::clock_time;

/// Props of [`Chat`].
#[derive(Properties, PartialEq)]
pub struct ChatProps {
    /// Messages, oldest first.
    pub messages: Vec<MessageView>,
    /// Display names of the peers typing now.
    pub typing: Vec<String>,
    /// The room driver (absent for the first render).
    pub handle: Option<RoomHandle>,
}

/// "NAME is typing…" (or several names).
fn typing_text(t: &crate::i18n::Strings, names: &[String]) -> String {
    let verb = if names.len() == 1 {
        t.typing_one
    } else {
        t.typing_many
    };
    format!("{} {verb}", names.join(t.name_sep))
}

/// Messages and the box to write one.
#[function_component(Chat)]
pub fn chat(props: &ChatProps) -> Html {
    let t = use_context::<LangCtx>().map_or(Lang::En, |c| c.lang).t();
    let input = use_node_ref();
    let list = use_node_ref();
    {
        // Keep the newest message in view.
        let list = list.clone();
        use_effect_with(props.messages.len(), move |_| {
            if let Some(el) = list.cast::<web_sys::Element>() {
                el.set_scroll_top(el.scroll_height());
            }
        });
    }
    let send = {
        let input = input.clone();
        let handle = props.handle.clone();
        Callback::from(move |()| {
            let Some(el) = input.cast::<web_sys::HtmlTextAreaElement>() else {
                return;
            };
            let text = el.value();
            if text.trim().is_empty() {
                return;
            }
            if let Some(h) = &handle {
                h.send_chat(text);
                el.set_value("");
            }
        })
    };
    let oninput = {
        let input = input.clone();
        let handle = props.handle.clone();
        Callback::from(move |_: InputEvent| {
            let has_text = input
                .cast::<web_sys::HtmlTextAreaElement>()
                .is_some_and(|el| !el.value().trim().is_empty());
            if let (true, Some(h)) = (has_text, &handle) {
                h.typing();
            }
        })
    };
    let onkeydown = {
        let send = send.clone();
        Callback::from(move |e: KeyboardEvent| {
            if e.key() == "Enter" && !e.shift_key() && !e.is_composing() {
                e.prevent_default();
                send.emit(());
            }
        })
    };
    let onsubmit = {
        let send = send.clone();
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            send.emit(());
        })
    };
    let items = props.messages.iter().map(|m| {
        let from = m.from.clone().unwrap_or_else(|| "me".to_owned());
        let name = match (&m.from, m.name.is_empty()) {
            (None, _) => t.me.to_owned(),
            (Some(id), true) => format!("#{id}"),
            (Some(_), false) => m.name.clone(),
        };
        let status = m.status.map(|s| match s {
            Status::Sending => t.sending,
            Status::Sent => t.sent,
            Status::Delivered => t.delivered,
        });
        html! {
            <li key={format!("{from}-{}", m.id)} class={classes!("message", m.from.is_none().then_some("own"))}
                data-id={m.id.clone()} data-from={from} data-status={m.status.map(Status::as_str)}>
                <div class="meta">
                    <span class="name">{ name }</span>
                    <time>{ clock_time(m.sent_at_ms) }</time>
                    if let Some(s) = status {
                        <span class="status">{ s }</span>
                    }
                </div>
                <div class="text">{ &m.text }</div>
            </li>
        }
    });
    html! {
        <section class="panel chat" aria-labelledby="chat-h">
            <h2 id="chat-h">{ t.chat }</h2>
            <ul class="messages" ref={list} aria-live="polite">{ for items }</ul>
            <p class="typing-line" aria-live="polite">
                if !props.typing.is_empty() {
                    <span class="typing">{ typing_text(t, &props.typing) }</span>
                }
            </p>
            <form class="composer" {onsubmit}>
                <textarea ref={input} aria-label="Message" rows="2" placeholder={t.message_placeholder}
                    maxlength="16000" {oninput} {onkeydown} />
                <button type="submit" class="primary" aria-label="Send">{ t.send }</button>
            </form>
        </section>
    }
}
