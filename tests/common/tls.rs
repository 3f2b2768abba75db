//! HTTPS in front of the fake Authentik, with a CA and server certificates made at test time:
//! a loopback TLS listener that hands each connection's plaintext to the fake's HTTP port.
//! The fake itself stays plain HTTP (it is the demo's too), and no certificate lives in the
//! repository to expire or leak.

use std::net::SocketAddr;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// A certificate authority of its own, as a company's private CA.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate, for `ca_file`.
    pub pem: String,
}

/// When a server certificate is valid.
#[derive(Debug, Clone, Copy)]
pub enum Validity {
    /// From 1975 on, for as long as rcgen's default allows.
    Current,
    /// Throughout the year 2000 only.
    Expired,
}

/// A server certificate and its private key.
pub struct ServerCertificate {
    der: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("a key");
        let certificate = params.self_signed(&key).expect("a CA certificate");
        TestCa {
            pem: certificate.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses), signed by this CA.
    pub fn issue(&self, names: &[&str], validity: Validity) -> ServerCertificate {
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("valid names");
        params
            .distinguished_name
            .push(DnType::CommonName, "authentik test server");
        if let Validity::Expired = validity {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().expect("a key");
        let certificate = params
            .signed_by(&key, &self.issuer)
            .expect("a server certificate");
        ServerCertificate {
            der: certificate.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        }
    }
}

/// Serves TLS with `certificate` on a free loopback port and forwards every connection to
/// `backend`; returns the port's address. Runs until the tokio runtime ends.
pub async fn tls_front(backend: SocketAddr, certificate: &ServerCertificate) -> SocketAddr {
    // The provider named, not the process default, which the tests do not install.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_single_cert(
            vec![certificate.der.clone()],
            PrivateKeyDer::Pkcs8(certificate.key.clone_key()),
        )
        .expect("the certificate and key fit");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    let addr = listener.local_addr().expect("a bound address");
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A handshake the client refuses ends here, which is what the tests look at.
                let Ok(mut tls) = acceptor.accept(client).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}
