//! The health check of a source: is the token valid, can it read users and groups, and what
//! Authentik version answers. Every failure becomes a "Needs Attention" reason that tells the
//! admin what to fix. Syncs record what they see too, so a token revoked between checks
//! shows up as unhealthy.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::authentik::{AuthentikClient, ClientError, ListKind, RetryPolicy};
use crate::clock::Clock;
use crate::config::SourceConfig;
use crate::store::{HealthRecord, HealthStatus};

/// A check answers quickly; a sync is the place for patience.
const CHECK_RETRY: RetryPolicy = RetryPolicy {
    attempts: 2,
    base_delay: Duration::from_millis(200),
    max_delay: Duration::from_secs(1),
    max_retry_after: Duration::from_secs(5),
};

/// A short machine-readable name for each reason an admin must tell apart.
pub fn reason_code(error: &ClientError) -> &'static str {
    match error {
        ClientError::Authentication { .. } => "bad_token",
        ClientError::Permission { .. } => "no_permission",
        ClientError::NotAuthentik { .. } | ClientError::NotFound { .. } => "not_authentik",
        ClientError::Dns { .. } => "dns",
        ClientError::Connect { .. } => "unreachable",
        ClientError::Tls { .. } => "tls",
        ClientError::UntrustedCertificate { .. } => "tls_untrusted",
        ClientError::ExpiredCertificate { .. } => "tls_expired",
        ClientError::NotYetValidCertificate { .. } => "tls_not_yet_valid",
        ClientError::CertificateNameMismatch { .. } => "tls_name_mismatch",
        ClientError::Timeout { .. } => "timeout",
        ClientError::Status { .. } => "server_error",
        ClientError::Decode { .. }
        | ClientError::Inconsistent { .. }
        | ClientError::BadPagination { .. }
        | ClientError::Malformed { .. } => "unexpected_response",
        ClientError::TooLarge { .. } => "response_too_large",
        ClientError::Redirect { .. } => "redirect",
        ClientError::Token { .. } => "token_unreadable",
    }
}

pub async fn check_source(source: &SourceConfig, clock: &dyn Clock) -> HealthRecord {
    let result = probe(source).await;
    health_record(
        &source.name,
        clock,
        result.map_err(|error| (reason_code(&error), error.to_string())),
    )
}

/// A health record from what a check or a sync saw: the Authentik version and the token's
/// user, or a reason code and the reason.
pub fn health_record(
    source: &str,
    clock: &dyn Clock,
    result: Result<(String, String), (&str, String)>,
) -> HealthRecord {
    let (status, version, user, reason_code, reason) = match result {
        Ok((version, user)) => (HealthStatus::Healthy, Some(version), Some(user), None, None),
        Err((code, reason)) => (
            HealthStatus::NeedsAttention,
            None,
            None,
            Some(code.to_string()),
            Some(reason),
        ),
    };
    HealthRecord {
        source: source.to_string(),
        status,
        checked_at: clock.now(),
        authentik_version: version,
        token_user: user,
        reason_code,
        reason,
        extra: BTreeMap::new(),
    }
}

async fn probe(source: &SourceConfig) -> Result<(String, String), ClientError> {
    let client = AuthentikClient::new(source, CHECK_RETRY)?;
    // `/me/` first: it tells a bad token from everything else.
    let me = client.me().await?;
    let version = client.version().await?;
    // `system_permissions` never lists view_user, so only reading the lists tells access.
    client.probe_list(ListKind::Users).await?;
    if !source.disable_group_sync {
        client.probe_list(ListKind::Groups).await?;
    }
    Ok((version.version_current, me.user.username))
}
