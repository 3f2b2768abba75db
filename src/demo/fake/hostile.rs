//! Misbehaviour on demand, for tests of a client's bounds: list endpoints that lie about their
//! size, never end, or contradict themselves, and directory text chosen to attack the terminal
//! or the spreadsheet that shows it.

/// How one list endpoint misbehaves; the default is an honest server. Set per list in
/// [`super::FakeState::lies`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListingLies {
    /// Served as `pagination.count` on every page instead of the real count.
    pub count: Option<u64>,
    /// Served as `pagination.total_pages` on every page; `next` points one page further
    /// until that page.
    pub total_pages: Option<u64>,
    /// Every page number is answered: past the end, with the last real page's records.
    pub answer_every_page: bool,
    /// The last record of the last page is replaced by a copy of the listing's first record
    /// with another `name`: two different records with one pk.
    pub conflicting_duplicate: bool,
    /// The last record of the last page carries the `uid` of the listing's first record: two
    /// users with different pks and one uid.
    pub shared_uid: bool,
    /// The body never ends: after the pagination, the same record repeats without end.
    pub endless_body: bool,
}

/// A display name that, shown raw, sets the terminal's title, rings its bell, clears the
/// screen, forges a second line and reverses the reading direction of what follows.
pub const HOSTILE_TEXT: &str =
    "Eve\u{1b}]0;pwned\u{7}\u{1b}[2J\r\nroot: password accepted\u{202e}txt.exe\u{2066}\u{9b}31m\u{7f}";

/// A value longer than any width Rust's formatting machinery accepts (65,535).
pub fn long_text(chars: usize) -> String {
    "L".repeat(chars)
}
