//! What a failed TLS handshake says about the server's certificate. An untrusted, an expired
//! and a misnamed certificate each have their own fix (the CA in `ca_file`, a renewal, the
//! right `base_url`), so each gets its own message instead of the handshake's error text.
//!
//! rustls says which check failed in its [`rustls::CertificateError`], but by the time the
//! error reaches aksync it is wrapped in reqwest's and hyper's errors, and inside an
//! [`std::io::Error`] whose `source()` skips it. So the chain is walked, looking into each
//! `io::Error` too.

use std::error::Error;

use rustls::pki_types::UnixTime;
use rustls::CertificateError;

use super::ClientError;
use crate::config::SourceConfig;
use crate::display;

/// How many of the names a certificate presents a message quotes.
const SHOWN_NAMES: usize = 3;
/// How many characters of one presented name a message quotes (the server chose them).
const NAME_CHARS: usize = 80;

/// Why the server's certificate was refused, where that has a fix of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateProblem {
    /// Not issued by a CA aksync trusts.
    UnknownIssuer,
    /// Past its end date (`None`: rustls did not say which).
    Expired { not_after: Option<String> },
    /// Before its start date.
    NotValidYet { not_before: Option<String> },
    /// Valid for other names than the one aksync connected to; the names it holds, quoted.
    WrongName { presented: Vec<String> },
}

impl CertificateProblem {
    /// The error for a source whose server at `host` presented such a certificate.
    pub fn error(self, host: &str, source: &SourceConfig) -> ClientError {
        let host = host.to_string();
        match self {
            CertificateProblem::UnknownIssuer => ClientError::UntrustedCertificate {
                host,
                source_name: source.name.clone(),
                // reqwest trusts the system's CAs besides the one in ca_file.
                trusted: match &source.ca_file {
                    Some(ca_file) => {
                        format!("the CA in {} nor one this system trusts", ca_file.display())
                    }
                    None => "a CA this system trusts".to_string(),
                },
            },
            CertificateProblem::Expired { not_after } => {
                ClientError::ExpiredCertificate { host, not_after }
            }
            CertificateProblem::NotValidYet { not_before } => {
                ClientError::NotYetValidCertificate { host, not_before }
            }
            CertificateProblem::WrongName { presented } => ClientError::CertificateNameMismatch {
                host,
                source_name: source.name.clone(),
                presented,
            },
        }
    }
}

/// The certificate problem behind a request error, if a certificate check failed.
pub fn certificate_problem(error: &(dyn Error + 'static)) -> Option<CertificateProblem> {
    let rustls::Error::InvalidCertificate(certificate) = find_rustls_error(error)? else {
        return None;
    };
    Some(match certificate {
        CertificateError::UnknownIssuer => CertificateProblem::UnknownIssuer,
        CertificateError::Expired => CertificateProblem::Expired { not_after: None },
        CertificateError::ExpiredContext { not_after, .. } => CertificateProblem::Expired {
            not_after: Some(shown_time(*not_after)),
        },
        CertificateError::NotValidYet => CertificateProblem::NotValidYet { not_before: None },
        CertificateError::NotValidYetContext { not_before, .. } => {
            CertificateProblem::NotValidYet {
                not_before: Some(shown_time(*not_before)),
            }
        }
        CertificateError::NotValidForName => CertificateProblem::WrongName {
            presented: Vec::new(),
        },
        CertificateError::NotValidForNameContext { presented, .. } => {
            CertificateProblem::WrongName {
                presented: presented
                    .iter()
                    .take(SHOWN_NAMES)
                    .map(|name| display::quote(bare_name(name), NAME_CHARS))
                    .collect(),
            }
        }
        _ => return None,
    })
}

/// The first rustls error in the chain, looking inside every `io::Error` on the way.
fn find_rustls_error<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(cause) = current {
        if let Some(found) = cause.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        let wrapped = cause
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref);
        if let Some(found) = wrapped.and_then(|inner| find_rustls_error(inner)) {
            return Some(found);
        }
        current = cause.source();
    }
    None
}

/// `authentik.example.com` of rustls's `DnsName("authentik.example.com")`; other text as it is.
fn bare_name(presented: &str) -> &str {
    presented
        .split_once("(\"")
        .and_then(|(kind, rest)| {
            let is_kind = !kind.is_empty() && kind.chars().all(|c| c.is_ascii_alphabetic());
            is_kind.then(|| rest.strip_suffix("\")"))?
        })
        .unwrap_or(presented)
}

fn shown_time(time: UnixTime) -> String {
    i64::try_from(time.as_secs())
        .ok()
        .and_then(|seconds| chrono::DateTime::from_timestamp(seconds, 0))
        .map_or_else(
            || format!("{} seconds after 1970", time.as_secs()),
            |time| time.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use std::time::Duration;

    /// A certificate error as it reaches aksync: inside an `io::Error` (as tokio-rustls
    /// wraps it), inside an error whose `source()` is that `io::Error`.
    fn wrapped(error: CertificateError) -> Box<dyn Error + 'static> {
        #[derive(Debug, thiserror::Error)]
        #[error("client error (Connect)")]
        struct Outer(#[source] std::io::Error);
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(error),
        );
        Box::new(Outer(io))
    }

    #[test]
    fn certificate_errors_are_found_inside_io_errors() {
        let at = |seconds| UnixTime::since_unix_epoch(Duration::from_secs(seconds));
        let cases = [
            (
                CertificateError::UnknownIssuer,
                CertificateProblem::UnknownIssuer,
            ),
            (
                CertificateError::ExpiredContext {
                    time: at(1_000_000_000),
                    not_after: at(978_307_200),
                },
                CertificateProblem::Expired {
                    not_after: Some("2001-01-01 00:00:00 UTC".into()),
                },
            ),
            (
                CertificateError::Expired,
                CertificateProblem::Expired { not_after: None },
            ),
            (
                CertificateError::NotValidYetContext {
                    time: at(0),
                    not_before: at(86_400),
                },
                CertificateProblem::NotValidYet {
                    not_before: Some("1970-01-02 00:00:00 UTC".into()),
                },
            ),
            (
                CertificateError::NotValidForNameContext {
                    expected: ServerName::try_from("127.0.0.1").unwrap(),
                    presented: vec![
                        "DnsName(\"a.example\")".into(),
                        "b\u{1b}[2J".into(),
                        "c".into(),
                        "d".into(),
                    ],
                },
                CertificateProblem::WrongName {
                    presented: vec![
                        "a.example".to_string(),
                        display::quote("b\u{1b}[2J", NAME_CHARS),
                        display::quote("c", NAME_CHARS),
                    ],
                },
            ),
        ];
        for (error, problem) in cases {
            assert_eq!(certificate_problem(&*wrapped(error)), Some(problem));
        }
        // A server's control characters never reach a message raw.
        let Some(CertificateProblem::WrongName { presented }) =
            certificate_problem(&*wrapped(CertificateError::NotValidForNameContext {
                expected: ServerName::try_from("x.example").unwrap(),
                presented: vec!["b\u{1b}[2J".into()],
            }))
        else {
            panic!("a wrong name");
        };
        assert!(!presented[0].contains('\u{1b}'), "{presented:?}");
    }

    #[test]
    fn other_errors_are_no_certificate_problem() {
        assert_eq!(
            certificate_problem(&*wrapped(CertificateError::BadSignature)),
            None
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(certificate_problem(&refused), None);
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure),
        );
        assert_eq!(certificate_problem(&alert), None);
    }
}
