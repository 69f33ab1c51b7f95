//! The cluster's public-key infrastructure.
//!
//! Every port in Flotilla is authenticated (DESIGN.md, invariant 7). One cluster CA signs every
//! certificate: masters' peer and serving certificates, node agents' certificates, and users'
//! client certificates. A certificate's subject carries identity the way Kubernetes reads it:
//! the common name is the user name and each organization is a group.
//!
//! The CA lives as two PEM files (`ca.crt`, `ca.key`) in a directory the operator controls;
//! [`ClusterCa::load_or_create`] makes it once and reuses it afterwards.

#![forbid(unsafe_code)]

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// File name of the CA certificate inside a PKI directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the CA private key inside a PKI directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// The user the API servers act as towards node agents (for logs and exec), as Kubernetes'
/// `kube-apiserver-kubelet-client`; a node agent's endpoint accepts no one else.
pub const NODE_CLIENT_USER: &str = "kube-apiserver-kubelet-client";
/// The file stem of that user's certificate in the PKI dir (shared by every master).
pub const NODE_CLIENT_CERT: &str = "kubelet-client";

/// The subject of a certificate (DER): its common name and its organizations, which the API
/// reads as a user name and groups.
pub fn subject_of(cert_der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(String::from))
        .collect();
    Some((name, groups))
}

/// What can go wrong while making, reading or using certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A certificate or key could not be generated or parsed.
    #[error("certificate error: {0}")]
    Certificate(#[from] rcgen::Error),
    /// A PEM file held no usable certificate or key.
    #[error("{path}: {what}")]
    Pem {
        /// The file involved.
        path: PathBuf,
        /// What was wrong with it.
        what: String,
    },
    /// rustls rejected the configuration built from the certificates.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a certificate may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A TLS server (the apiserver, the etcd API endpoint).
    Server,
    /// A TLS client (kubectl, etcdctl, a node agent talking to the apiserver).
    Client,
    /// Both ends of a connection (Raft peers, which dial each other).
    Peer,
}

/// What to put in a certificate the CA issues.
#[derive(Debug, Clone)]
pub struct CertRequest {
    /// Subject common name: the user name for client certificates.
    pub common_name: String,
    /// Subject organizations: the groups for client certificates.
    pub organizations: Vec<String>,
    /// DNS names the certificate is valid for (servers and peers).
    pub dns_names: Vec<String>,
    /// IP addresses the certificate is valid for (servers and peers).
    pub ip_addresses: Vec<IpAddr>,
    /// Server, client or both.
    pub usage: Usage,
}

impl CertRequest {
    /// A request for a client certificate identifying `user` in `groups`.
    pub fn client(user: &str, groups: &[&str]) -> CertRequest {
        CertRequest {
            common_name: user.to_string(),
            organizations: groups.iter().map(|g| g.to_string()).collect(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            usage: Usage::Client,
        }
    }

    /// A request for a certificate serving (and, for peers, dialing) on `hosts` (names or IPs).
    pub fn host(common_name: &str, hosts: &[String], usage: Usage) -> CertRequest {
        let mut dns_names = Vec::new();
        let mut ip_addresses = Vec::new();
        for h in hosts {
            match h.parse::<IpAddr>() {
                Ok(ip) => ip_addresses.push(ip),
                Err(_) => dns_names.push(h.clone()),
            }
        }
        CertRequest {
            common_name: common_name.to_string(),
            organizations: Vec::new(),
            dns_names,
            ip_addresses,
            usage,
        }
    }
}

/// A certificate and its private key, both PEM-encoded.
#[derive(Clone)]
pub struct Identity {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The private key (PEM, PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

impl Identity {
    /// Writes `<dir>/<stem>.crt` and `<dir>/<stem>.key` (the key readable by its owner only).
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), PkiError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        fs::write(&cert, &self.cert_pem).map_err(io_err(&cert))?;
        write_private(&key, &self.key_pem)?;
        Ok((cert, key))
    }

    /// Reads `<dir>/<stem>.crt` and `<dir>/<stem>.key`.
    pub fn read(dir: &Path, stem: &str) -> Result<Identity, PkiError> {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        Ok(Identity {
            cert_pem: fs::read_to_string(&cert).map_err(io_err(&cert))?,
            key_pem: fs::read_to_string(&key).map_err(io_err(&key))?,
        })
    }

    /// The certificate chain as rustls wants it.
    pub fn cert_chain(&self) -> Result<Vec<CertificateDer<'static>>, PkiError> {
        parse_certs(&self.cert_pem, Path::new("<certificate>"))
    }

    /// The private key as rustls wants it.
    pub fn private_key(&self) -> Result<PrivateKeyDer<'static>, PkiError> {
        let mut reader = self.key_pem.as_bytes();
        rustls_pemfile::private_key(&mut reader)
            .map_err(io_err(Path::new("<private key>")))?
            .ok_or_else(|| PkiError::Pem {
                path: PathBuf::from("<private key>"),
                what: "no private key found".into(),
            })
    }
}

fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(contents.as_bytes()).map_err(io_err(path))
}

fn parse_certs(pem: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let mut reader = pem.as_bytes();
    let certs = rustls_pemfile::certs(&mut reader)
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err(path))?;
    if certs.is_empty() {
        return Err(PkiError::Pem {
            path: path.to_path_buf(),
            what: "no certificate found".into(),
        });
    }
    Ok(certs)
}

/// The cluster certificate authority.
pub struct ClusterCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

/// Certificates are valid from an hour ago (clock skew between machines) for ten years.
fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(3650);
}

impl ClusterCa {
    /// Generates a new CA whose subject is `name`.
    pub fn generate(name: &str) -> Result<ClusterCa, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Reads the CA from `dir` (`ca.crt`, `ca.key`).
    pub fn load(dir: &Path) -> Result<ClusterCa, PkiError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
        let key_pem = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        Ok(ClusterCa { cert_pem, issuer })
    }

    /// Reads the CA from `dir`, or generates one there if `dir` holds none.
    pub fn load_or_create(dir: &Path, name: &str) -> Result<ClusterCa, PkiError> {
        if dir.join(CA_CERT_FILE).exists() {
            return ClusterCa::load(dir);
        }
        let ca = ClusterCa::generate(name)?;
        ca.write(dir)?;
        Ok(ca)
    }

    /// Writes `ca.crt` and `ca.key` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), PkiError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let cert = dir.join(CA_CERT_FILE);
        fs::write(&cert, &self.cert_pem).map_err(io_err(&cert))?;
        write_private(&dir.join(CA_KEY_FILE), &self.issuer.key().serialize_pem())
    }

    /// The CA certificate (PEM), which every party trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate signed by this CA, with a fresh key.
    pub fn issue(&self, req: &CertRequest) -> Result<Identity, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, req.common_name.as_str());
        for o in &req.organizations {
            dn.push(DnType::OrganizationName, o.as_str());
        }
        params.distinguished_name = dn;
        for name in &req.dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName(name.clone().try_into()?));
        }
        for ip in &req.ip_addresses {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match req.usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::Peer => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        params.use_authority_key_identifier_extension = true;
        validity(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The set of roots (the cluster CA) a TLS endpoint trusts.
pub fn root_store(ca_pem: &str) -> Result<rustls::RootCertStore, PkiError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in parse_certs(ca_pem, Path::new(CA_CERT_FILE))? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// The crypto provider every Flotilla TLS endpoint uses (ring; see DESIGN.md).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide rustls provider. Call once at start-up; later calls are
/// harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// How a TLS server treats client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// A client must present a certificate signed by the cluster CA (Raft peers, the agent's
    /// endpoint, the etcd API).
    Required,
    /// A client may present one; without it, it must authenticate otherwise (the apiserver
    /// accepts bearer tokens).
    Optional,
}

/// A rustls server configuration serving `identity` and verifying clients against `ca_pem`.
pub fn server_config(
    ca_pem: &str,
    identity: &Identity,
    client_auth: ClientAuth,
) -> Result<rustls::ServerConfig, PkiError> {
    let roots = Arc::new(root_store(ca_pem)?);
    let builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots, crypto_provider());
    let builder = match client_auth {
        ClientAuth::Required => builder,
        ClientAuth::Optional => builder.allow_unauthenticated(),
    };
    let verifier = builder.build().map_err(|e| PkiError::Pem {
        path: PathBuf::from(CA_CERT_FILE),
        what: format!("cannot verify clients with this CA: {e}"),
    })?;
    Ok(
        rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(identity.cert_chain()?, identity.private_key()?)?,
    )
}

/// A rustls client configuration trusting `ca_pem` and presenting `identity` when given.
pub fn client_config(
    ca_pem: &str,
    identity: Option<&Identity>,
) -> Result<rustls::ClientConfig, PkiError> {
    let builder = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(root_store(ca_pem)?);
    Ok(match identity {
        Some(id) => builder.with_client_auth_cert(id.cert_chain()?, id.private_key()?)?,
        None => builder.with_no_client_auth(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_chain_to_the_ca_and_configure_tls() {
        let ca = ClusterCa::generate("flotilla-test-ca").unwrap();
        let server = ca
            .issue(&CertRequest::host(
                "m1",
                &["localhost".into(), "127.0.0.1".into()],
                Usage::Peer,
            ))
            .unwrap();
        let admin = ca
            .issue(&CertRequest::client("admin", &["system:masters"]))
            .unwrap();
        server_config(ca.cert_pem(), &server, ClientAuth::Required).unwrap();
        client_config(ca.cert_pem(), Some(&admin)).unwrap();
        assert_eq!(server.cert_chain().unwrap().len(), 1);
    }

    #[test]
    fn a_ca_written_to_disk_is_reused_and_can_still_sign() {
        let dir = std::env::temp_dir().join(format!("flotilla-pki-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let first = ClusterCa::load_or_create(&dir, "ca").unwrap();
        let second = ClusterCa::load_or_create(&dir, "ca").unwrap();
        assert_eq!(first.cert_pem(), second.cert_pem());
        let id = second.issue(&CertRequest::client("u", &[])).unwrap();
        let (c, k) = id.write(&dir, "u").unwrap();
        let back = Identity::read(&dir, "u").unwrap();
        assert_eq!(back.cert_pem, id.cert_pem);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&k).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(c.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn garbage_pem_is_a_clear_error() {
        let err = root_store("not a certificate").unwrap_err();
        assert!(err.to_string().contains("no certificate"), "{err}");
    }
}
