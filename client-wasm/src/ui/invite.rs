//! The invite panel (link, copy, share, QR code) and the display-name input.

use wasm_bindgen_futures::JsFuture;
use yew::prelude::*;

use super::LangCtx;
use crate::i18n::Lang;
use crate::room::RoomHandle;
use crate::util::{get, js_error};

/// Props of [`Invite`].
#[derive(Properties, PartialEq)]
pub struct InviteProps {
    /// The full invite link.
    pub link: AttrValue,
}

fn qr_svg(link: &str) -> Option<String> {
    let code = qrcode::QrCode::new(link.as_bytes()).ok()?;
    Some(
        code.render::<qrcode::render::svg::Color>()
            .min_dimensions(180, 180)
            .dark_color(qrcode::render::svg::Color("#000000"))
            .light_color(qrcode::render::svg::Color("#ffffff"))
            .build(),
    )
}

/// The invite link with copy, share and a QR code.
#[function_component(Invite)]
pub fn invite(props: &InviteProps) -> Html {
    let t = use_context::<LangCtx>().map_or(Lang::En, |c| c.lang).t();
    let copied = use_state(|| None::<Result<(), String>>);
    let svg = use_memo(props.link.clone(), |link| qr_svg(link));
    let on_copy = {
        let link = props.link.clone();
        let copied = copied.clone();
        Callback::from(move |_| {
            let Some(w) = web_sys::window() else { return };
            let clipboard = w.navigator().clipboard();
            let promise = clipboard.write_text(&link);
            let copied = copied.clone();
            wasm_bindgen_futures::spawn_local(async move {
                copied.set(Some(
                    JsFuture::from(promise)
                        .await
                        .map(|_| ())
                        .map_err(|e| js_error(&e)),
                ));
            });
        })
    };
    let can_share = web_sys::window().is_some_and(|w| !get(&w.navigator(), "share").is_undefined());
    let on_share = {
        let link = props.link.clone();
        Callback::from(move |_| {
            let Some(w) = web_sys::window() else { return };
            let data = web_sys::ShareData::new();
            data.set_url(&link);
            data.set_title("Parlor");
            let promise = w.navigator().share_with_data(&data);
            wasm_bindgen_futures::spawn_local(async move {
                // The user closing the share sheet is not an error worth showing.
                let _ = JsFuture::from(promise).await;
            });
        })
    };
    let qr = (*svg)
        .clone()
        .map(|s| Html::from_html_unchecked(AttrValue::from(s)));
    html! {
        <section class="panel invite" aria-labelledby="invite-h">
            <h2 id="invite-h">{ t.invite }</h2>
            <code id="invite-link" class="link">{ props.link.clone() }</code>
            <div class="row">
                <button type="button" aria-label="Copy invite link" onclick={on_copy}>
                    { if matches!(*copied, Some(Ok(()))) { t.copied } else { t.copy } }
                </button>
                if can_share {
                    <button type="button" aria-label="Share invite link" onclick={on_share}>{ t.share }</button>
                }
            </div>
            if let Some(Err(e)) = &*copied {
                <p class="alert" role="alert">{ format!("Could not copy: {e}") }</p>
            }
            if let Some(qr) = qr {
                <details class="qr-box">
                    <summary>{ t.show_qr }</summary>
                    <div class="qr" role="img" aria-label="QR code of the invite link">{ qr }</div>
                </details>
            }
        </section>
    }
}

/// Props of [`NameInput`].
#[derive(Properties, PartialEq)]
pub struct NameProps {
    /// The room driver (absent for the first render).
    pub handle: Option<RoomHandle>,
}

/// The display name, remembered in localStorage.
#[function_component(NameInput)]
pub fn name_input(props: &NameProps) -> Html {
    let t = use_context::<LangCtx>().map_or(Lang::En, |c| c.lang).t();
    let name = use_state(crate::storage::display_name);
    let oninput = {
        let name = name.clone();
        let handle = props.handle.clone();
        Callback::from(move |e: InputEvent| {
            let value: String = e
                .target_unchecked_into::<web_sys::HtmlInputElement>()
                .value();
            let mut value = value;
            let mut end = value.len().min(parlor_protocol::signaling::MAX_NAME_BYTES);
            while !value.is_char_boundary(end) {
                end -= 1;
            }
            value.truncate(end);
            crate::storage::set_display_name(&value);
            if let Some(h) = &handle {
                h.set_name(value.clone());
            }
            name.set(value);
        })
    };
    html! {
        <section class="panel name">
            <label for="display-name">{ t.your_name }</label>
            <input id="display-name" type="text" aria-label="Display name" maxlength="32"
                value={(*name).clone()} {oninput} autocomplete="nickname" placeholder="Ada" />
            <p class="note">{ t.name_note }</p>
        </section>
    }
}
