//! TLS and mutual TLS for every rlhf server and client, with rustls.
//!
//! Servers accept through our own acceptor rather than tonic's `ServerTlsConfig`, which is fixed
//! at start: the certificate and key are read again when their files change (cert-manager and
//! Kubernetes secret mounts rotate them in place), checked at most once a second on a handshake.
//! A rotation that leaves the files unreadable for a moment (the key written before the
//! certificate) keeps the old pair until both read back as a matching pair.
//!
//! With a client CA the server demands a client certificate signed by it (mutual TLS); a client
//! without one, or with one from another CA, fails the handshake and never reaches a service.
//!
//! Clients use tonic's TLS: an `https://` URL is dialled with the process's [`ClientTls`]
//! ([`set_client`]), which trusts the cluster's CA and presents the process's own certificate.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::ring::{default_provider, sign::any_supported_type};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_stream::wrappers::ReceiverStream;

/// How often a handshake looks at the certificate files' modification times.
const RECHECK: Duration = Duration::from_secs(1);
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsError(String);

fn error(context: impl std::fmt::Display, e: impl std::fmt::Display) -> TlsError {
    TlsError(format!("{context}: {e}"))
}

/// A server's certificate files (PEM).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerTls {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// A client's trust and identity (PEM).
#[derive(Debug, Clone, PartialEq)]
pub struct ClientTls {
    /// The CA that signs the servers' certificates.
    pub ca: PathBuf,
    /// This process's certificate and key, for servers that demand one (mutual TLS).
    pub identity: Option<(PathBuf, PathBuf)>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| error(path.display(), e))
}

fn load_key_pair(files: &ServerTls) -> Result<CertifiedKey, TlsError> {
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| error(files.cert.display(), e))?;
    if certs.is_empty() {
        return Err(error(files.cert.display(), "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| error(files.key.display(), e))?;
    let signer = any_supported_type(&key).map_err(|e| error(files.key.display(), e))?;
    let pair = CertifiedKey::new(certs, signer);
    pair.keys_match().map_err(|e| error(format!("{} and {}", files.cert.display(), files.key.display()), e))?;
    Ok(pair)
}

fn modified(files: &ServerTls) -> (Option<SystemTime>, Option<SystemTime>) {
    let at = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (at(&files.cert), at(&files.key))
}

/// The server's certificate, read again when its files change.
#[derive(Debug)]
struct Reloading {
    files: ServerTls,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    pair: Arc<CertifiedKey>,
    stamp: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

impl Reloading {
    fn new(files: &ServerTls) -> Result<Self, TlsError> {
        let stamp = modified(files);
        let pair = Arc::new(load_key_pair(files)?);
        Ok(Reloading { files: files.clone(), state: Mutex::new(Loaded { pair, stamp, checked: Instant::now() }) })
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut state = self.state.lock().ok()?;
        if state.checked.elapsed() >= RECHECK {
            state.checked = Instant::now();
            let stamp = modified(&self.files);
            if stamp != state.stamp {
                match load_key_pair(&self.files) {
                    Ok(pair) => {
                        state.pair = Arc::new(pair);
                        state.stamp = stamp;
                        tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                    }
                    // Mid-rotation: keep serving the old pair and look again next time.
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS certificate changed but does not load; keeping the old one")
                    }
                }
            }
        }
        Some(state.pair.clone())
    }
}

fn roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| error(ca.display(), e))? {
        roots.add(cert.map_err(|e| error(ca.display(), e))?).map_err(|e| error(ca.display(), e))?;
    }
    if roots.is_empty() {
        return Err(error(ca.display(), "no CA certificate in the file"));
    }
    Ok(roots)
}

/// The rustls configuration of a server with `files`: HTTP/2 only, client certificates demanded
/// when a client CA is set.
pub fn server_config(files: &ServerTls) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| error("protocol versions", e))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider)
                .build()
                .map_err(|e| error(ca.display(), e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(Reloading::new(files)?));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The connections `listener` accepts, after their TLS handshake. Handshakes run side by side,
/// so a slow or hostile client holds up no one; failed ones are logged and dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> ReceiverStream<io::Result<tokio_rustls::server::TlsStream<TcpStream>>> {
    let acceptor = TlsAcceptor::from(config);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// tonic's client TLS for `files`: trust its CA, present its identity.
pub fn client_config(files: &ClientTls) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
    roots(&files.ca)?;
    let mut config = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read(&files.ca)?));
    if let Some((cert, key)) = &files.identity {
        // The same check a server makes of its own pair: a half-written rotation is refused here,
        // not discovered in a handshake.
        load_key_pair(&ServerTls { cert: cert.clone(), key: key.clone(), client_ca: None })?;
        config = config.identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(config)
}

/// The process's client TLS: its files, and the config read from them as they last were.
struct ClientState {
    files: ClientTls,
    stamp: Vec<Option<SystemTime>>,
    config: tonic::transport::ClientTlsConfig,
}

static CLIENT: Mutex<Option<ClientState>> = Mutex::new(None);

fn client_stamp(files: &ClientTls) -> Vec<Option<SystemTime>> {
    let at = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut paths = vec![files.ca.as_path()];
    if let Some((cert, key)) = &files.identity {
        paths.extend([cert.as_path(), key.as_path()]);
    }
    paths.into_iter().map(at).collect()
}

/// Sets the TLS every `https://` client of this process uses (at start; a second call replaces
/// the first).
pub fn set_client(files: &ClientTls) -> Result<(), TlsError> {
    let config = client_config(files)?;
    let state = ClientState { files: files.clone(), stamp: client_stamp(files), config };
    *CLIENT.lock().map_err(|_| TlsError("client TLS lock poisoned".into()))? = Some(state);
    Ok(())
}

/// The client TLS for a new connection: read again when its files changed since, so a channel
/// made after a rotation presents the new certificate (channels already open keep theirs until
/// they are made again). A rotation caught half-written keeps the previous files' config.
pub(crate) fn client() -> Option<tonic::transport::ClientTlsConfig> {
    let mut guard = CLIENT.lock().ok()?;
    let state = guard.as_mut()?;
    let stamp = client_stamp(&state.files);
    if stamp != state.stamp {
        match client_config(&state.files) {
            Ok(config) => {
                state.config = config;
                state.stamp = stamp;
                tracing::info!(ca = %state.files.ca.display(), "client TLS files reloaded");
            }
            Err(e) => tracing::warn!(error = %e, "client TLS files changed but do not load; keeping the old ones"),
        }
    }
    Some(state.config.clone())
}
