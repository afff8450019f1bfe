//! TLS to the databases (the Amazon DocumentDB connection path): `[source.tls]` and
//! `[sink.tls]` against SecantusDB servers started with a certificate made by openssl here,
//! one of them asking for client certificates (mutual TLS). A wrong CA and a missing client
//! certificate each stop strait at start with one line that says what to change.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bson::{doc, Document};

use crate::bad_input::{command_expect_failure, run_expect_failure};
use crate::common::*;

/// A CA, a server certificate for 127.0.0.1 / localhost signed by it, a client certificate
/// (certificate and key in one PEM, as `certificate_key_file` wants) and an unrelated CA.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client: PathBuf,
    other_ca: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_pki(dir: &Path) -> Pki {
    let self_signed = |name: &str, cn: &str| {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        )
    };
    self_signed("ca", "strait test CA");
    self_signed("other-ca", "someone else's CA");
    let signed = |name: &str, cn: &str, ext: &str| {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &format!("{name}.pem"),
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    };
    signed(
        "server",
        "localhost",
        "subjectAltName = IP:127.0.0.1, DNS:localhost\nextendedKeyUsage = serverAuth\n",
    );
    signed("client", "strait", "extendedKeyUsage = clientAuth\n");
    let mut both = std::fs::read(dir.join("client.pem")).unwrap();
    both.extend(std::fs::read(dir.join("client.key")).unwrap());
    std::fs::write(dir.join("client-both.pem"), both).unwrap();
    Pki {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client: dir.join("client-both.pem"),
        other_ca: dir.join("other-ca.pem"),
    }
}

/// A server speaking TLS only; with `mutual`, it refuses clients without a certificate signed
/// by the CA.
fn tls_server(pki: &Pki, mutual: bool) -> Server {
    let (cert, key, ca) = (
        pki.server_cert.to_str().unwrap(),
        pki.server_key.to_str().unwrap(),
        pki.ca.to_str().unwrap(),
    );
    let mut args = vec!["--tls-cert-file", cert, "--tls-key-file", key];
    if mutual {
        args.extend(["--tls-ca-file", ca, "--tls-require-client-cert"]);
    }
    Server::start_with(&args)
}

/// A test client of a TLS server.
async fn tls_client(s: &Server, pki: &Pki) -> mongodb::Client {
    let uri = format!(
        "{}&tls=true&tlsCAFile={}&tlsCertificateKeyFile={}",
        s.uri(),
        pki.ca.display(),
        pki.client.display()
    );
    mongodb::Client::with_uri_str(uri).await.unwrap()
}

fn tls_table(table: &str, ca: &Path, client: Option<&Path>) -> String {
    let mut t = format!("[{table}.tls]\nca_file = \"{}\"\n", ca.display());
    if let Some(c) = client {
        t += &format!("certificate_key_file = \"{}\"\n", c.display());
    }
    t
}

/// Source over TLS (server certificate checked against `ca_file`), sink over mutual TLS:
/// copy and stream, byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_and_sink_over_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let (src, dst) = (tls_server(&pki, false), tls_server(&pki, true));
    let (s, d) = (tls_client(&src, &pki).await, tls_client(&dst, &pki).await);
    let c = s.database("shop").collection::<Document>("orders");
    c.insert_many((0..50_i64).map(|i| doc! { "_id": i, "v": i as i32, "d": { "x": 1.5 } }))
        .await
        .unwrap();
    let text = format!(
        "id = \"tls\"\n[source]\nuri = \"{}\"\n{}[sink]\nuri = \"{}\"\n{}",
        src.uri(),
        tls_table("source", &pki.ca, None),
        dst.uri(),
        tls_table("sink", &pki.ca, Some(&pki.client)),
    );
    let cfg = write_config(dir.path(), "p.toml", &text);
    let log = dir.path().join("log");
    let mut st = Strait::spawn(&cfg, &log);
    wait_for(Duration::from_secs(60), "the copy", &st, || async {
        st.log_text().contains("Full sync finished")
    })
    .await;
    c.update_one(doc! { "_id": 3_i64 }, doc! { "$set": { "v": 99 } })
        .await
        .unwrap();
    c.delete_one(doc! { "_id": 4_i64 }).await.unwrap();
    wait_identical(
        &s,
        ("shop", "orders"),
        &d,
        ("shop", "orders"),
        Duration::from_secs(60),
        Some(&st),
    )
    .await;
    assert!(st.sigterm().success(), "{}", st.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_and_a_missing_client_certificate_each_give_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let (src, dst) = (Server::start(), tls_server(&pki, true));
    let plain_source = format!("id = \"tls\"\n[source]\nuri = \"{}\"\n", src.uri());

    // The server's certificate is not signed by the CA strait was given.
    run_expect_failure(
        &write_config(
            dir.path(),
            "wrong-ca.toml",
            &format!(
                "{plain_source}[sink]\nuri = \"{}\"\nconnect_timeout = \"3s\"\n{}",
                dst.uri(),
                tls_table("sink", &pki.other_ca, Some(&pki.client))
            ),
        ),
        &["sink", "certificate", "tls.ca_file"],
    );

    // The server asks for a client certificate and strait has none.
    run_expect_failure(
        &write_config(
            dir.path(),
            "no-client-cert.toml",
            &format!(
                "{plain_source}[sink]\nuri = \"{}\"\nconnect_timeout = \"3s\"\n{}",
                dst.uri(),
                tls_table("sink", &pki.ca, None)
            ),
        ),
        &["sink", "tls.certificate_key_file"],
    );
}

/// `curl` over HTTPS trusting `ca`; returns (exit code, body).
fn curl(url: &str, ca: &Path) -> (i32, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg(url)
        .output()
        .expect("curl runs");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serve_worker_talks_tls_to_its_control_database_and_serves_https() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let control = tls_server(&pki, false);
    let port = free_port_for_tests();
    let server_toml = |ca: &Path, cert: &Path| {
        format!(
            "worker_id = \"tls-1\"\nlease_ttl = \"4s\"\n[control]\nuri = \"{}\"\nconnect_timeout = \"3s\"\n[control.tls]\nca_file = \"{}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"t\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            control.uri(),
            ca.display(),
            cert.display(),
            pki.server_key.display()
        )
    };
    // A wrong CA for the control database, then a missing certificate file: one line each.
    let cfg = write_config(
        dir.path(),
        "wrong-ca.toml",
        &server_toml(&pki.other_ca, &pki.server_cert),
    );
    command_expect_failure("serve", &cfg, &["control database", "control.tls.ca_file"]);
    let cfg = write_config(
        dir.path(),
        "no-cert.toml",
        &server_toml(&pki.ca, &dir.path().join("missing.pem")),
    );
    command_expect_failure("serve", &cfg, &["api.tls_cert_file", "missing.pem"]);

    let cfg = write_config(
        dir.path(),
        "ok.toml",
        &server_toml(&pki.ca, &pki.server_cert),
    );
    let worker = Strait::serve(&cfg, &dir.path().join("w.log"));
    let url = format!("https://127.0.0.1:{port}/workers");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let body = loop {
        let (code, body) = curl(&url, &pki.ca);
        if code == 0 && body.contains("tls-1") {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no HTTPS answer: {code} {body}\n{}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        body.contains(&format!("\"url\":\"https://127.0.0.1:{port}\"")),
        "{body}"
    );
    // Someone else's CA does not trust it; plain HTTP gets no answer.
    let (code, body) = curl(&url, &pki.other_ca);
    assert_ne!(code, 0, "{body}");
    let (code, body) = curl(&format!("http://127.0.0.1:{port}/workers"), &pki.ca);
    assert_ne!(code, 0, "{body}");
}
