//! Strings that come out of a plugin, made safe to show.
//!
//! A plugin controls every string it returns: names, versions, messages,
//! refusal texts, even the function names in a trap's backtrace. Unbounded,
//! an 8 MiB listener name quoted in a refusal makes the status patch fail at
//! the API server's size limit, so the reason never shows; raw, a newline or
//! an ANSI escape forges log lines and rewrites the operator's terminal.
//! So free text is cleaned (control characters replaced, length bounded)
//! before it reaches a status, an Event, a log line or a terminal, and
//! identifiers the host acts on are refused outright when they are too long
//! or carry control characters: silently changing them would change what
//! the plan means.

/// Longest free text kept from a plugin (a refusal, a message), in bytes.
pub const MESSAGE_LIMIT: usize = 1024;
/// Longest name a plugin may return for something the host acts on (a
/// listener, a pod, a load balancer, a host name): Kubernetes names and DNS
/// names stop at 253.
pub const NAME_LIMIT: usize = 253;
/// Longest value that is neither a name nor free text (a path pattern, a
/// service URL).
pub const VALUE_LIMIT: usize = 4096;

/// `text` with control and bidirectional-override characters replaced by
/// `�` (newlines and tabs by a space), cut on a character boundary to at
/// most `limit` bytes, followed by a note of the original length when cut.
pub fn clean(text: &str, limit: usize) -> String {
    let mut out = String::with_capacity(text.len().min(limit) + 32);
    for ch in text.chars() {
        let shown = match ch {
            '\n' | '\r' | '\t' => ' ',
            ch if unsafe_to_show(ch) => '\u{fffd}',
            ch => ch,
        };
        if out.len() + shown.len_utf8() > limit {
            out.push_str(&format!("… ({} bytes)", text.len()));
            return out;
        }
        out.push(shown);
    }
    out
}

/// A string the host will act on, returned as is when it is short enough and
/// printable; otherwise why not, without repeating it.
pub fn identifier(what: &str, value: String, limit: usize) -> Result<String, String> {
    if value.len() > limit {
        return Err(format!(
            "{what} is {} bytes long; the limit is {limit}",
            value.len()
        ));
    }
    if value.chars().any(unsafe_to_show) || value.contains(['\n', '\r', '\t']) {
        return Err(format!(
            "{what} {:?} contains control characters",
            clean(&value, 64)
        ));
    }
    Ok(value)
}

/// A plugin's refusal of its configuration or request, as `what: why`.
pub fn refusal(what: &str, why: &str) -> String {
    format!("{what}: {}", clean(why, MESSAGE_LIMIT))
}

fn unsafe_to_show(ch: char) -> bool {
    ch.is_control()
        // Bidirectional overrides and isolates reorder what a terminal shows.
        || matches!(ch, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case::plain("ipam-sequential", 64, "ipam-sequential")]
    #[case::newline("a\nb", 64, "a b")]
    #[case::ansi_escape("\u{1b}[2Jboom", 64, "\u{fffd}[2Jboom")]
    #[case::bidi_override("abc\u{202e}fed", 64, "abc\u{fffd}fed")]
    #[case::cut("abcdefghij", 4, "abcd… (10 bytes)")]
    #[case::cut_on_a_char_boundary("ééé", 3, "é… (6 bytes)")]
    fn clean_replaces_control_characters_and_bounds_length(
        #[case] input: &str,
        #[case] limit: usize,
        #[case] expected: &str,
    ) {
        assert_eq!(clean(input, limit), expected);
    }

    #[test]
    fn identifiers_are_refused_not_changed() {
        assert_eq!(
            identifier("listener", "lst-1".into(), NAME_LIMIT),
            Ok("lst-1".into())
        );
        let long = identifier("listener", "x".repeat(8 << 20), NAME_LIMIT).unwrap_err();
        assert_eq!(long, "listener is 8388608 bytes long; the limit is 253");
        let escape = identifier("pod", "p\u{1b}[31m".into(), NAME_LIMIT).unwrap_err();
        assert!(escape.contains("control characters") && !escape.contains('\u{1b}'));
    }
}
