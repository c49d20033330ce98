//! TLS on a real server: mutual TLS refuses clients without a certificate, with one from another
//! CA, or in plain text; a certificate rotated on disk is served from the next handshake on, and
//! a half-written rotation keeps the old one.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rlhf_harness::certs::TestCa;
use rlhf_rpc::tls::{ClientTls, ServerTls, client_config, server_config};
use tokio_rustls::rustls;
use tonic::service::Routes;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// A health server with `tls` on a free port; returns its port.
async fn serve(tls: &ServerTls) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (health, health_service) = rlhf_rpc::health();
    let options = rlhf_rpc::ServeOptions { tls: Some(server_config(tls).unwrap()), ..Default::default() };
    tokio::spawn(async move {
        rlhf_rpc::serve_with(listener, Routes::new(health_service), &[], health, options, std::future::pending()).await
    });
    port
}

/// Whether a health check over `url` with `tls` (none: plain text) gets an answer.
async fn answered(url: &str, tls: Option<&ClientTls>) -> bool {
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_string()).unwrap();
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(client_config(tls).unwrap()).unwrap();
    }
    let Ok(channel) = endpoint.connect_timeout(Duration::from_secs(5)).connect().await else { return false };
    HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await.is_ok()
}

/// The certificate (DER) the server on `port` presents, to a client of `ca` with `identity`.
async fn presented(port: u16, ca: &Path, identity: (&Path, &Path)) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(ca).unwrap()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_file(identity.0).unwrap()],
            PrivateKeyDer::from_pem_file(identity.1).unwrap(),
        )
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_of_its_ca_and_reloads_a_rotated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (TestCa::new("rlhf test CA"), TestCa::new("another CA"));
    let ca = ours.write(dir.path(), "ca.pem");
    let other_ca = theirs.write(dir.path(), "other-ca.pem");
    let first = ours.issue("server");
    let (cert, key) = first.write(dir.path(), "server");
    let files = ServerTls { cert, key, client_ca: Some(ca.clone()) };
    let port = serve(&files).await;
    let url = format!("https://127.0.0.1:{port}");
    let client = |name: &str, of: &TestCa, trusting: &Path| ClientTls {
        ca: trusting.to_path_buf(),
        identity: Some(of.issue(name).write(dir.path(), name)),
    };
    let learner = client("learner", &ours, &ca);
    assert!(answered(&url, Some(&learner)).await, "a client of the cluster's CA was refused");
    let anonymous = ClientTls { ca: ca.clone(), identity: None };
    assert!(!answered(&url, Some(&anonymous)).await, "a client without a certificate got in");
    assert!(!answered(&url, Some(&client("intruder", &theirs, &ca))).await, "a client of another CA got in");
    assert!(!answered(&format!("http://127.0.0.1:{port}"), None).await, "a plain-text client got in");
    // And the client checks the server: one that trusts another CA refuses this server.
    assert!(!answered(&url, Some(&client("doubter", &ours, &other_ca))).await);

    // Rotation: the new certificate is written first, its key a moment later. Until both
    // are there and match, the old pair is served.
    let identity = learner.identity.clone().unwrap();
    assert_eq!(presented(port, &ca, (&identity.0, &identity.1)).await, first.cert_der);
    let rotated = ours.issue("server-rotated");
    std::fs::write(&files.cert, &rotated.cert_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(presented(port, &ca, (&identity.0, &identity.1)).await, first.cert_der, "a half rotation was served");
    std::fs::write(&files.key, &rotated.key_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(
        presented(port, &ca, (&identity.0, &identity.1)).await,
        rotated.cert_der,
        "the rotation was not picked up"
    );
    assert!(answered(&url, Some(&learner)).await);

    // The process's own client certificate rotates too: a channel made after the files change
    // presents the new one. First a certificate the server refuses, then one it accepts.
    let outsider = theirs.issue("client-before");
    let (client_cert, client_key) = outsider.write(dir.path(), "client");
    rlhf_rpc::tls::set_client(&ClientTls { ca: ca.clone(), identity: Some((client_cert.clone(), client_key.clone())) })
        .unwrap();
    let check = || async {
        let channel = rlhf_rpc::endpoint(&url).unwrap();
        HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await.is_ok()
    };
    assert!(!check().await, "a client certificate of another CA was accepted");
    let renewed = ours.issue("client-after");
    std::fs::write(&client_key, &renewed.key_pem).unwrap();
    std::fs::write(&client_cert, &renewed.cert_pem).unwrap();
    assert!(check().await, "the renewed client certificate was not picked up");
}
