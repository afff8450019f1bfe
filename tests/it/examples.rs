//! Every file in examples/ is a valid pipeline (the README and the examples stay true).

#[test]
fn every_example_parses() {
    let mut n = 0;
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            strait::config::PipelineConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 4);
}

#[test]
fn every_server_example_parses() {
    let mut n = 0;
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/serve")).unwrap()
    {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            strait::serve::ServerConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 2);
}

#[test]
fn config_reference_documents_every_key() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config.md")).unwrap();
    let src = [
        "/src/config.rs",
        "/src/connectors/kafka/config.rs",
        "/src/connectors/mongo/config.rs",
        "/src/connectors/archive/config.rs",
        "/src/connectors/dynamodb/config.rs",
        "/src/connectors/kinesis/config.rs",
        "/src/serve/config.rs",
    ]
    .map(|f| std::fs::read_to_string(format!("{}{f}", env!("CARGO_MANIFEST_DIR"))).unwrap())
    .join("\n");
    // Every `pub field:` of the config structs appears in the reference as `field`.
    for line in src.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("pub ") {
            if let Some((name, _)) = rest.split_once(':') {
                if name.chars().all(|c| c.is_ascii_lowercase() || c == '_') && name != "kind" {
                    let documented =
                        doc.contains(&format!("`{name}`")) || doc.contains(&format!("[{name}]"));
                    assert!(documented, "docs/config.md lacks `{name}`");
                }
            }
        }
    }
}
