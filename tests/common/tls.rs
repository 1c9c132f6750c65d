//! What the transport and authentication tests set up on disk and on the
//! wire: callers files and bearer tokens, a test CA with the certificates it
//! signs, and TLS channels to a server.
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

pub type Issuer = rcgen::Issuer<'static, rcgen::KeyPair>;

/// The SHA-256 of a bearer token, as a callers file lists it.
pub fn sha(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

/// `message` with `authorization: Bearer <token>`.
pub fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {token}").parse().expect("metadata");
    request.metadata_mut().insert("authorization", value);
    request
}

/// A self-signed test CA: its certificate as PEM, and the issuer that signs
/// with it.
pub fn new_ca() -> (String, Issuer) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "privacy-records test CA");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-sign");
    (cert.pem(), rcgen::Issuer::new(params, key))
}

/// A certificate signed by `issuer` and its private key, as PEM.
pub fn issue(
    names: Vec<String>,
    common_name: &str,
    usage: rcgen::ExtendedKeyUsagePurpose,
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(names).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params.extended_key_usages = vec![usage];
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}

/// A server certificate for `names`, CN `privacy-records`, and its key.
pub fn server_pair(names: &[&str], issuer: &rcgen::Issuer<'_, rcgen::KeyPair>) -> (String, String) {
    issue(
        names.iter().map(|n| n.to_string()).collect(),
        "privacy-records",
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        issuer,
    )
}

/// A client certificate with CN `common_name`, as a TLS identity.
pub fn client_identity(common_name: &str, issuer: &rcgen::Issuer<'_, rcgen::KeyPair>) -> Identity {
    let (cert, key) = issue(
        Vec::new(),
        common_name,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        issuer,
    );
    Identity::from_pem(cert, key)
}

/// A lazily connecting TLS channel to `addr` that trusts `ca_pem` and
/// presents `identity` if given.
pub fn tls_channel(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    identity: Option<Identity>,
) -> Channel {
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some(identity) = identity {
        config = config.identity(identity);
    }
    Channel::from_shared(format!("https://{addr}"))
        .expect("uri")
        .tls_config(config)
        .expect("tls")
        .connect_lazy()
}
