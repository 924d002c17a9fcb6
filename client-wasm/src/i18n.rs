//! UI strings in English and Chinese, picked from the saved choice or
//! `navigator.language`. Accessible names that tests and assistive tools rely
//! on (`aria-label`s such as "Send files") stay English in every language;
//! visible text follows the language.

/// A UI language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// English.
    En,
    /// Simplified Chinese.
    Zh,
}

impl Lang {
    /// The saved choice, else the browser's language.
    pub fn detect() -> Self {
        let code = crate::storage::language()
            .or_else(|| web_sys::window().and_then(|w| w.navigator().language()))
            .unwrap_or_default();
        if code.to_lowercase().starts_with("zh") {
            Self::Zh
        } else {
            Self::En
        }
    }

    /// The BCP 47 code.
    pub fn code(self) -> &'static str {
        match self {
            Self::En => "en",
            Self::Zh => "zh",
        }
    }

    /// The other language (for the switch).
    pub fn other(self) -> Self {
        match self {
            Self::En => Self::Zh,
            Self::Zh => Self::En,
        }
    }

    /// The strings of this language.
    pub fn t(self) -> &'static Strings {
        match self {
            Self::En => &EN,
            Self::Zh => &ZH,
        }
    }
}

/// Every visible string of the UI.
#[derive(Debug, PartialEq)]
pub struct Strings {
    pub lang_name: &'static str,
    pub tagline: &'static str,
    pub start_room: &'static str,
    pub home_note: &'static str,
    pub invite: &'static str,
    pub copy: &'static str,
    pub copied: &'static str,
    pub share: &'static str,
    pub show_qr: &'static str,
    pub your_name: &'static str,
    pub name_note: &'static str,
    pub peers: &'static str,
    pub nobody: &'static str,
    pub connecting: &'static str,
    pub direct: &'static str,
    pub turn: &'static str,
    pub server_relay: &'static str,
    pub failed: &'static str,
    pub chat: &'static str,
    pub message_placeholder: &'static str,
    pub send: &'static str,
    pub me: &'static str,
    pub sending: &'static str,
    pub sent: &'static str,
    pub delivered: &'static str,
    /// After one name: "NAME is typing…".
    pub typing_one: &'static str,
    /// After several names: "A, B are typing…".
    pub typing_many: &'static str,
    /// Between the names of several typists.
    pub name_sep: &'static str,
    pub files: &'static str,
    pub send_files: &'static str,
    pub send_folder: &'static str,
    pub send_to: &'static str,
    pub everyone: &'static str,
    pub drop_hint: &'static str,
    pub accept: &'static str,
    pub decline: &'static str,
    pub cancel: &'static str,
    pub save: &'static str,
    pub dismiss: &'static str,
    pub to: &'static str,
    pub from: &'static str,
    pub server_connecting: &'static str,
    pub server_joined: &'static str,
    pub server_reconnecting: &'static str,
    pub server_failed: &'static str,
    pub st_offered: &'static str,
    pub st_waiting: &'static str,
    pub st_active: &'static str,
    pub st_done: &'static str,
    pub st_failed: &'static str,
    pub st_cancelled: &'static str,
    pub st_declined: &'static str,
    pub hashing: &'static str,
    pub saving: &'static str,
    /// A transfer kept while its peer is away (`{peer}` is replaced).
    pub away: &'static str,
    /// An interrupted transfer picking up where it stopped.
    pub resuming: &'static str,
    pub left: &'static str,
    pub bad_link: &'static str,
    pub no_key: &'static str,
    pub home_link: &'static str,
    pub have_code: &'static str,
    pub code_placeholder: &'static str,
    pub join: &'static str,
    pub code_bad_format: &'static str,
    pub code_unknown_word: &'static str,
    pub code_not_found: &'static str,
    pub code_error: &'static str,
    pub code_waiting: &'static str,
    pub code_checking: &'static str,
    pub code_matched: &'static str,
    pub code_mismatch: &'static str,
    pub code_failed: &'static str,
}

/// English.
pub static EN: Strings = Strings {
    lang_name: "English",
    tagline: "Chat and send files directly between browsers. The server only introduces you.",
    start_room: "Start a room",
    home_note: "You get a private link to share. Messages and files travel peer to peer, encrypted.",
    invite: "Invite link",
    copy: "Copy",
    copied: "Copied",
    share: "Share…",
    show_qr: "QR code",
    your_name: "Your name",
    name_note: "Shown to others when you join.",
    peers: "People here",
    nobody: "Nobody else yet. Share the invite link.",
    connecting: "connecting",
    direct: "direct",
    turn: "TURN relay",
    server_relay: "server relay",
    failed: "failed",
    chat: "Chat",
    message_placeholder: "Write a message (Enter sends, Shift+Enter for a new line)",
    send: "Send",
    me: "me",
    sending: "sending",
    sent: "sent",
    delivered: "delivered",
    typing_one: "is typing…",
    typing_many: "are typing…",
    name_sep: ", ",
    files: "Files",
    send_files: "Send files…",
    send_folder: "Send a folder…",
    send_to: "Send to",
    everyone: "Everyone",
    drop_hint: "or drop files anywhere on the page",
    accept: "Accept",
    decline: "Decline",
    cancel: "Cancel",
    save: "Save",
    dismiss: "Dismiss",
    to: "to",
    from: "from",
    server_connecting: "Connecting to the server…",
    server_joined: "Connected",
    server_reconnecting: "Reconnecting",
    server_failed: "Not connected",
    st_offered: "offered",
    st_waiting: "waiting for accept",
    st_active: "transferring",
    st_done: "done",
    st_failed: "failed",
    st_cancelled: "cancelled",
    st_declined: "declined",
    hashing: "hashing…",
    saving: "saving…",
    away: "waiting for {peer} to come back",
    resuming: "resuming…",
    left: "left",
    bad_link: "This invite link is not valid.",
    no_key: "This invite link is missing its key (the part after #). Ask for the whole link.",
    home_link: "Start a new room",
    have_code: "Have a code?",
    code_placeholder: "e.g. 7-apple-river",
    join: "Join",
    code_bad_format: "A code looks like 7-apple-river: a number and two words.",
    code_unknown_word: "One of the words is not a code word; check the spelling.",
    code_not_found: "No such code: it was used already, has expired, or the number is wrong.",
    code_error: "Could not use the code:",
    code_waiting: "Waiting for the other side to check the code…",
    code_checking: "Checking the code…",
    code_matched: "The code matched.",
    code_mismatch: "The code did not match: check it and try again (codes work once).",
    code_failed: "The code could not be checked:",
};

/// Simplified Chinese.
pub static ZH: Strings = Strings {
    lang_name: "中文",
    tagline: "在浏览器之间直接聊天和发送文件。服务器只负责牵线。",
    start_room: "创建房间",
    home_note: "你会得到一个私密链接。消息和文件点对点加密传输。",
    invite: "邀请链接",
    copy: "复制",
    copied: "已复制",
    share: "分享…",
    show_qr: "二维码",
    your_name: "你的名字",
    name_note: "加入时显示给其他人。",
    peers: "房间里的人",
    nobody: "还没有其他人。分享邀请链接吧。",
    connecting: "连接中",
    direct: "直连",
    turn: "TURN 中继",
    server_relay: "服务器中继",
    failed: "失败",
    chat: "聊天",
    message_placeholder: "输入消息（回车发送，Shift+回车换行）",
    send: "发送",
    me: "我",
    sending: "发送中",
    sent: "已发送",
    delivered: "已送达",
    typing_one: "正在输入…",
    typing_many: "正在输入…",
    name_sep: "、",
    files: "文件",
    send_files: "发送文件…",
    send_folder: "发送文件夹…",
    send_to: "发送给",
    everyone: "所有人",
    drop_hint: "或把文件拖到页面任意位置",
    accept: "接收",
    decline: "拒绝",
    cancel: "取消",
    save: "保存",
    dismiss: "关闭",
    to: "发给",
    from: "来自",
    server_connecting: "正在连接服务器…",
    server_joined: "已连接",
    server_reconnecting: "正在重连",
    server_failed: "未连接",
    st_offered: "待接收",
    st_waiting: "等待对方接收",
    st_active: "传输中",
    st_done: "完成",
    st_failed: "失败",
    st_cancelled: "已取消",
    st_declined: "已拒绝",
    hashing: "计算校验…",
    saving: "保存中…",
    away: "等待 {peer} 回来",
    resuming: "继续传输…",
    left: "剩余",
    bad_link: "邀请链接无效。",
    no_key: "邀请链接缺少密钥（# 之后的部分）。请索取完整链接。",
    home_link: "创建新房间",
    have_code: "有配对码？",
    code_placeholder: "例如 7-apple-river",
    join: "加入",
    code_bad_format: "配对码形如 7-apple-river：一个数字加两个单词。",
    code_unknown_word: "有个单词不在配对词表中，请检查拼写。",
    code_not_found: "找不到这个配对码：它已被使用、已过期，或数字有误。",
    code_error: "无法使用配对码：",
    code_waiting: "正在等待对方核对配对码…",
    code_checking: "正在核对配对码…",
    code_matched: "配对码一致。",
    code_mismatch: "配对码不一致：请核对后重试（每个配对码只能用一次）。",
    code_failed: "无法核对配对码：",
};
