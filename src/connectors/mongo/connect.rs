//! Connecting to MongoDB-family deployments, with start-up checks that turn the driver's
//! slow, generic failures into one clear line within the connect timeout.

use mongodb::options::{ClientOptions, Tls, TlsOptions};
use mongodb::Client;

use crate::config::MongoEndpoint;
use crate::connectors::mongo::config::redact_uri;
use crate::error::{Error, Result, Role};

/// Opens a client for `endpoint` and proves it works with a `ping`, so that a wrong host,
/// password or TLS setting is reported now, in one line.
pub async fn connect(endpoint: &MongoEndpoint, role: Role) -> Result<Client> {
    connect_uri(&endpoint.uri, endpoint, role).await
}

/// Like [`connect`] with another URI but the endpoint's TLS and timeout settings.
pub async fn connect_uri(uri: &str, endpoint: &MongoEndpoint, role: Role) -> Result<Client> {
    let target = redact_uri(uri);
    let mut opts = ClientOptions::parse(uri)
        .await
        .map_err(|e| Error::User(format!("{role} URI {target} is not valid: {e}")))?;
    opts.server_selection_timeout = Some(endpoint.connect_timeout);
    opts.connect_timeout = Some(
        endpoint
            .connect_timeout
            .min(std::time::Duration::from_secs(10)),
    );
    opts.app_name.get_or_insert_with(|| "strait".to_string());
    if let Some(tls) = &endpoint.tls {
        opts.tls = Some(if tls.enabled {
            let mut t = TlsOptions::default();
            t.ca_file_path = tls.ca_file.clone();
            t.cert_key_file_path = tls.certificate_key_file.clone();
            t.allow_invalid_certificates = Some(tls.allow_invalid_certificates);
            Tls::Enabled(t)
        } else {
            Tls::Disabled
        });
    }
    let client = Client::with_options(opts)
        .map_err(|e| Error::User(format!("{role} URI {target} is not usable: {e}")))?;
    // Spawned so that the driver future is never dropped mid-call.
    let probe = client.clone();
    let ping = tokio::spawn(async move {
        probe
            .database("admin")
            .run_command(bson::doc! { "ping": 1 })
            .await
    });
    match ping.await {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(e)) => Err(tls_failure(role, &target, endpoint, &e)
            .unwrap_or_else(|| classify_connect_error(role, &target, e))),
        Err(e) => Err(Error::Internal(format!("ping task failed: {e}"))),
    }
}

fn classify_connect_error(role: Role, target: &str, e: mongodb::error::Error) -> Error {
    use mongodb::error::ErrorKind;
    let detail = first_line(&e.to_string());
    match e.kind.as_ref() {
        ErrorKind::Authentication { .. } => Error::Auth {
            role,
            target: target.into(),
            detail,
        },
        ErrorKind::Command(c) if c.code == 18 || c.code == 13 => Error::Auth {
            role,
            target: target.into(),
            detail,
        },
        ErrorKind::ServerSelection { .. } | ErrorKind::Io(_) | ErrorKind::DnsResolve { .. } => {
            // Authentication failures surface inside server-selection messages too.
            if detail.contains("Authentication failed") || detail.contains("auth error") {
                Error::Auth {
                    role,
                    target: target.into(),
                    detail,
                }
            } else {
                Error::Unreachable {
                    role,
                    target: target.into(),
                    detail,
                }
            }
        }
        _ => Error::mongo(role, "connecting", e),
    }
}

/// A TLS handshake failure said in one line with what to change, or `None` for anything
/// else. The driver reports these as I/O errors inside its server-selection timeout.
fn tls_failure(
    role: Role,
    target: &str,
    endpoint: &MongoEndpoint,
    e: &mongodb::error::Error,
) -> Option<Error> {
    let text = e.to_string();
    // The checkpoint store borrows the tls table of the endpoint it defaults from.
    let (side, table) = match role {
        Role::Source => ("source", "source"),
        Role::Sink => ("sink", "sink"),
        Role::Checkpoint => ("checkpoint store", "sink"),
        Role::Control => ("control database", "control"),
        Role::DeadLetters => ("dead-letter queue", "dead_letter"),
    };
    let tls = endpoint.tls.as_ref();
    let cas = match tls.and_then(|t| t.ca_file.as_ref()) {
        Some(f) => format!("{table}.tls.ca_file ({})", f.display()),
        None => format!("the system's CAs (set {table}.tls.ca_file)"),
    };
    let cause = |marker: &str| {
        text.find(marker).map(|i| {
            let rest = &text[i..];
            rest[..rest.find([',', '}']).unwrap_or(rest.len())]
                .trim()
                .to_string()
        })
    };
    let msg = if let Some(c) = cause("invalid peer certificate") {
        if c.contains("NotValidForName") {
            format!("the {side} at {target} presented a TLS certificate for another host name ({c}); connect by a name the certificate lists, or for SSH tunnels set {table}.tls.allow_invalid_certificates = true")
        } else if c.contains("Expired") || c.contains("NotValidYet") {
            format!("the {side} at {target} presented a TLS certificate outside its validity dates ({c})")
        } else {
            format!("the {side} at {target} presented a TLS certificate that is not signed by a CA in {cas} ({c})")
        }
    } else if let Some(c) = cause("CertificateRequired")
        .or_else(|| cause("BadCertificate"))
        .or_else(|| cause("UnknownCA"))
        .or_else(|| cause("CertificateUnknown"))
    {
        match tls.and_then(|t| t.certificate_key_file.as_ref()) {
            None => format!("the {side} at {target} asks for a TLS client certificate and none is set: set {table}.tls.certificate_key_file to a PEM file with the certificate and its key ({c})"),
            Some(f) => format!("the {side} at {target} refused the TLS client certificate in {table}.tls.certificate_key_file ({}): {c}", f.display()),
        }
    } else if let Some(c) = cause("InvalidContentType").or_else(|| cause("CorruptMessage")) {
        format!("the {side} at {target} does not speak TLS ({c}); remove [{table}.tls] or tls=true, or point at the TLS port")
    } else {
        return None;
    };
    Some(Error::User(msg))
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("");
    match line.char_indices().nth(300) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line.to_string(),
    }
}
