//! The sample manifests users copy from are valid: they decode into the API types and pass
//! `validate`.

use std::path::Path;

use sectordb::api::{BackupPolicy, DataSharingConnection, SectorDatabase};
use sectordb::validate;
use serde_json::Value;

#[test]
fn every_sample_decodes_and_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/samples");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("manifests/samples exists") {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            let kind = doc["kind"].as_str().unwrap_or_default().to_string();
            let result = match kind.as_str() {
                "SectorDatabase" => validate::database(
                    &serde_json::from_value::<SectorDatabase>(doc).unwrap().spec,
                    None,
                ),
                "DataSharingConnection" => validate::connection(
                    &serde_json::from_value::<DataSharingConnection>(doc)
                        .unwrap()
                        .spec,
                ),
                "BackupPolicy" => {
                    validate::policy(&serde_json::from_value::<BackupPolicy>(doc).unwrap().spec)
                }
                _ => continue,
            };
            assert_eq!(result, Ok(()), "{}", path.display());
            seen.push(kind);
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "BackupPolicy",
            "DataSharingConnection",
            "SectorDatabase",
            "SectorDatabase"
        ]
    );
}
