//! What the page's URL asks for besides the room and its key: the query
//! parameter `?relay=turn|server`, read once when the page starts. Plain
//! Rust, unit-tested natively.
//!
//! The invite link's `#KEY` fragment is unaffected: a room URL may look like
//! `https://host/r/ROOM?relay=server#KEY`.

/// How this page must reach the other peers (`?relay=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RelayMode {
    /// Any WebRTC path; the server relay as the last resort.
    #[default]
    Auto,
    /// `?relay=turn`: WebRTC through TURN relay candidates only (ICE
    /// transport policy `relay`); the server relay still takes over when
    /// that does not connect (as `parlor --force-relay turn` does).
    Turn,
    /// `?relay=server`: never open an `RTCPeerConnection`; every peer is
    /// reached through the server relay from the start.
    Server,
}

impl RelayMode {
    /// The mode `search` (`location.search`, with or without its `?`) asks
    /// for. An unknown `relay` value is an error naming it; the last `relay`
    /// parameter wins.
    pub fn from_query(search: &str) -> Result<Self, String> {
        let mut mode = Ok(Self::Auto);
        for pair in search.trim_start_matches('?').split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if name != "relay" {
                continue;
            }
            mode = match value {
                "turn" => Ok(Self::Turn),
                "server" => Ok(Self::Server),
                "" | "auto" => Ok(Self::Auto),
                other => Err(format!(
                    "Unknown ?relay={} in the address (use turn or server); ignored.",
                    other.chars().take(40).collect::<String>()
                )),
            };
        }
        mode
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_modes_come_from_the_query() {
        assert_eq!(RelayMode::from_query(""), Ok(RelayMode::Auto));
        assert_eq!(RelayMode::from_query("?"), Ok(RelayMode::Auto));
        assert_eq!(RelayMode::from_query("?relay=turn"), Ok(RelayMode::Turn));
        assert_eq!(
            RelayMode::from_query("?x=1&relay=server"),
            Ok(RelayMode::Server)
        );
        assert_eq!(
            RelayMode::from_query("relay=server&relay=auto"),
            Ok(RelayMode::Auto)
        );
        assert_eq!(RelayMode::from_query("?relayed=turn"), Ok(RelayMode::Auto));
        assert!(RelayMode::from_query("?relay=pigeon").is_err());
    }
}
