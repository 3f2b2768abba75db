//! Text for people: strings that Authentik, its admins or any directory user control are
//! escaped before a terminal, a Markdown viewer or a browser shows them, and cut to a length
//! a table can hold. Machine formats (`--json`, `--csv`, JSONL envelopes) keep exact values
//! and do not come through here. URLs lose what may be a secret ([`redact_url`]) wherever
//! they are shown.

use std::borrow::Cow;

/// A time as every report, table and file shows it: RFC 3339 in UTC, to the second.
pub fn timestamp(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// What ends a cut value.
pub const ELLIPSIS: char = '…';

/// Whether a character would act on the reader instead of being read: C0 and C1 controls and
/// DEL (escape sequences, bells, carriage returns that forge lines), bidirectional overrides
/// and isolates (text that reads differently from what it is), and the Unicode line and
/// paragraph separators (line breaks in some viewers).
fn is_hazard(character: char) -> bool {
    character.is_control()
        || matches!(character, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        || matches!(character, '\u{2028}' | '\u{2029}')
}

/// The text with every hazardous character written out as `\u{1b}`, the way Rust writes
/// such characters; everything else, including other non-ASCII text, is kept as it is.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_hazard) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for character in text.chars() {
        if is_hazard(character) {
            escaped.push_str(&format!("\\u{{{:x}}}", u32::from(character)));
        } else {
            escaped.push(character);
        }
    }
    Cow::Owned(escaped)
}

/// The first `max_chars` characters, the last of them an ellipsis when the text was longer.
pub fn truncate(text: &str, max_chars: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max_chars) {
        None => Cow::Borrowed(text),
        Some(_) => {
            let keep = max_chars.saturating_sub(1);
            let end = text
                .char_indices()
                .nth(keep)
                .map_or(text.len(), |(at, _)| at);
            Cow::Owned(format!("{}{ELLIPSIS}", &text[..end]))
        }
    }
}

/// A short, safe quote of text a server sent: whitespace runs (line breaks included) become
/// one space, hazards are escaped, and the result is cut to `max_chars`.
pub fn quote(text: &str, max_chars: usize) -> String {
    // Cutting first bounds the work on a huge body; escaping can only lengthen what is left.
    let bounded = truncate(text, max_chars.saturating_mul(2));
    let single_line = bounded.split_whitespace().collect::<Vec<_>>().join(" ");
    truncate(&escape(&single_line), max_chars).into_owned()
}

/// A URL as it may appear in a message, a log or a report: credentials, query and fragment
/// can carry secrets, so they are replaced by `***`. Works on text that is not a valid URL too.
pub fn redact_url(raw: &str) -> String {
    let (scheme, rest) = match raw.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), raw),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_string(),
    };
    let tail = match tail.find(['?', '#']) {
        Some(at) => format!("{}{}***", &tail[..at], &tail[at..=at]),
        None => tail.to_string(),
    };
    format!("{scheme}{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_overrides_are_written_out() {
        let hostile = "a\u{1b}]0;pwned\u{7}\u{1b}[2J\r\nb\u{202e}c\u{2066}d\u{9b}e\u{7f}";
        let escaped = escape(hostile);
        assert_eq!(
            escaped,
            "a\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\\u{d}\\u{a}b\\u{202e}c\\u{2066}d\\u{9b}e\\u{7f}"
        );
        assert!(!escaped.chars().any(is_hazard));
    }

    #[test]
    fn ordinary_text_is_borrowed_unchanged() {
        let text = "Zoë Ångström 山田 — ok";
        assert!(matches!(escape(text), Cow::Borrowed(_)));
        assert_eq!(escape(text), text);
    }

    #[test]
    fn truncation_counts_characters_and_marks_the_cut() {
        assert_eq!(truncate("abcdef", 6), "abcdef");
        assert_eq!(truncate("abcdefg", 6), "abcde…");
        assert_eq!(truncate("ééééééé", 3), "éé…");
        assert_eq!(truncate("", 0), "");
        assert_eq!(truncate("ab", 0), "…");
    }

    #[test]
    fn quotes_are_one_short_safe_line() {
        let body = format!(
            "<html>\n  <h1>Bad\u{1b}[31m</h1>{}</html>",
            "x".repeat(10_000)
        );
        let quoted = quote(&body, 40);
        assert_eq!(quoted.chars().count(), 40);
        assert!(
            quoted.starts_with("<html> <h1>Bad\\u{1b}[31m</h1>"),
            "{quoted}"
        );
        assert!(quoted.ends_with(ELLIPSIS));
    }

    #[test]
    fn urls_in_messages_lose_credentials_queries_and_fragments() {
        for (raw, shown) in [
            ("https://ak.example.com/auth", "https://ak.example.com/auth"),
            (
                "https://admin:pw@ak.example.com/x?token=t#f",
                "https://***@ak.example.com/x?***",
            ),
            ("admin:pw@ak example.com", "***@ak example.com"),
            ("https://ak.example.com#token", "https://ak.example.com#***"),
        ] {
            assert_eq!(redact_url(raw), shown);
        }
    }
}
