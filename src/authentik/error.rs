//! Errors of the Authentik client. Each names the endpoint (never the token) and tells an
//! admin what to do. The health check maps them to its "Needs Attention" reasons.

/// The hint for a rejected token. Authentik answers 403 `Token invalid/expired` for a wrong,
/// expired or revoked token, for an inactive token user, and for an app password, which is
/// what `POST /core/users/service_account/` issues; none can be told apart from the response.
pub const TOKEN_HINT: &str = "the token is wrong, expired or revoked, its user is inactive, or it is an app password; create an API Token under Directory > Tokens and App passwords (intent `api`) and put it in token_file";

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ClientError {
    #[error("authentication failed at {endpoint} (403 {detail:?}): {hint}", hint = TOKEN_HINT)]
    Authentication { endpoint: String, detail: String },
    #[error("permission denied at {endpoint} (403 {detail:?}): give the token's user a role with view_user and view_group (authentik_core)")]
    Permission { endpoint: String, detail: String },
    #[error("{endpoint} returned 404 {detail:?}")]
    NotFound { endpoint: String, detail: String },
    #[error("{endpoint} is not an Authentik API ({reason}): check base_url points at the Authentik server, without a path such as /if/admin")]
    NotAuthentik { endpoint: String, reason: String },
    #[error("{endpoint} returned HTTP {status}{retries}: {body}", retries = retry_note(*attempts))]
    Status {
        endpoint: String,
        status: u16,
        body: String,
        attempts: u32,
    },
    #[error("cannot resolve host {host}: check base_url and DNS")]
    Dns { host: String },
    #[error("cannot connect to {endpoint}{retries}: {reason}", retries = retry_note(*attempts))]
    Connect {
        endpoint: String,
        reason: String,
        attempts: u32,
    },
    #[error("TLS failure with {endpoint}: {reason}; check that base_url names the HTTPS port, and if Authentik uses a private CA, set ca_file")]
    Tls { endpoint: String, reason: String },
    #[error("TLS failure with {host}: its certificate is not trusted (unknown issuer: not issued by {trusted}): set `sources.{source_name}.ca_file` to the PEM file of the CA that issued it")]
    UntrustedCertificate {
        host: String,
        source_name: String,
        /// The CAs that were tried, in words.
        trusted: String,
    },
    #[error("TLS failure with {host}: its certificate expired{on}: renew the certificate of the Authentik server (or of the proxy in front of it), or check this machine's clock", on = when(" on", not_after))]
    ExpiredCertificate {
        host: String,
        not_after: Option<String>,
    },
    #[error("TLS failure with {host}: its certificate is not valid yet{from}: check this machine's clock, or the certificate's start date", from = when(" before", not_before))]
    NotYetValidCertificate {
        host: String,
        not_before: Option<String>,
    },
    #[error("TLS failure with {host}: its certificate does not match the name {host}{holds}: set `sources.{source_name}.base_url` to a name the certificate holds, or reissue the certificate for {host}", holds = holds(presented))]
    CertificateNameMismatch {
        host: String,
        source_name: String,
        /// The names the certificate holds, quoted (the server chose them).
        presented: Vec<String>,
    },
    #[error("{endpoint} timed out{retries}: raise timeout_secs or lower page_size", retries = retry_note(*attempts))]
    Timeout { endpoint: String, attempts: u32 },
    #[error("unexpected response from {endpoint}: {reason}")]
    Decode { endpoint: String, reason: String },
    #[error("the {list} listing was inconsistent: {reason}")]
    Inconsistent { list: String, reason: String },
    #[error("the {list} listing's pagination does not add up ({reason}): the server, or a proxy in front of it, is misbehaving")]
    BadPagination { list: String, reason: String },
    #[error("malformed response from {endpoint} ({reason}): the server, or a proxy in front of it, sent broken JSON")]
    Malformed { endpoint: String, reason: String },
    #[error("{endpoint} sent more than {limit_mib} MiB in one response: lower page_size, or raise max_page_mib if the records are really that large")]
    TooLarge { endpoint: String, limit_mib: usize },
    #[error("{endpoint} redirected (HTTP {status}) to {location}: set base_url to the address Authentik answers on itself")]
    Redirect {
        endpoint: String,
        status: u16,
        location: String,
    },
    /// The token file could not be read when the client was made (a credential that is gone,
    /// say); the reason names the key and the file.
    #[error("{reason}")]
    Token { reason: String },
}

fn when(preposition: &str, time: &Option<String>) -> String {
    time.as_ref()
        .map(|time| format!("{preposition} {time}"))
        .unwrap_or_default()
}

fn holds(presented: &[String]) -> String {
    if presented.is_empty() {
        return String::new();
    }
    format!(" (it holds {})", presented.join(", "))
}

fn retry_note(attempts: u32) -> String {
    if attempts > 1 {
        format!(" (after {attempts} attempts)")
    } else {
        String::new()
    }
}
