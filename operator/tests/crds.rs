//! The committed CRDs are what the code generates, and every schema is one a real apiserver
//! accepts as structural: typed nodes, descriptions on every field, no unsigned formats.

use std::path::Path;

use serde_json::Value;

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("operator/ sits in the repository")
}

#[test]
fn committed_crds_match_the_code() {
    let mut stale = Vec::new();
    for (path, expected) in sectordb::crdgen::files() {
        let committed = std::fs::read_to_string(repo_root().join(&path)).unwrap_or_default();
        if committed != expected {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "generated files differ from the code: {stale:?}; run `cargo run -p sectordb-operator -- crd --write .`"
    );
}

/// Walks a schema node at `path`, collecting every problem.
fn check(node: &Value, path: &str, problems: &mut Vec<String>) {
    let int_or_string = node.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let preserve = node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if node.get("type").is_none() && !int_or_string && !preserve {
        problems.push(format!("{path}: no type"));
    }
    if let Some(format) = node.get("format").and_then(Value::as_str) {
        if format.starts_with("uint") {
            problems.push(format!("{path}: format {format}"));
        }
    }
    if node
        .get("enum")
        .and_then(Value::as_array)
        .is_some_and(|values| values.iter().any(Value::is_null))
    {
        problems.push(format!(
            "{path}: null among enum values (Kubernetes 1.20 refuses the CRD)"
        ));
    }
    for keyword in ["oneOf", "anyOf", "allOf", "not", "$ref"] {
        if node.get(keyword).is_some() {
            problems.push(format!("{path}: uses {keyword}"));
        }
    }
    if let Some(properties) = node.get("properties").and_then(Value::as_object) {
        if node.get("type").and_then(Value::as_str) != Some("object") {
            problems.push(format!("{path}: properties on a non-object"));
        }
        for (name, child) in properties {
            let child_path = format!("{path}.{name}");
            let described = child
                .get("description")
                .and_then(Value::as_str)
                .is_some_and(|d| !d.trim().is_empty());
            // apiVersion, kind and metadata are the apiserver's own fields.
            if !described && !path.is_empty() {
                problems.push(format!("{child_path}: no description"));
            }
            check(child, &child_path, problems);
        }
    }
    if let Some(items) = node.get("items") {
        check(items, &format!("{path}[]"), problems);
    }
    if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
        check(values, &format!("{path}{{}}"), problems);
    }
}

/// Every string a user writes has a bound: the apiserver refuses a longer one before the operator
/// ever reads it.
fn unbounded_strings(node: &Value, path: &str, found: &mut Vec<String>) {
    let is_string = node.get("type").and_then(Value::as_str) == Some("string");
    let bounded = node.get("maxLength").is_some()
        || node.get("enum").is_some()
        || node.get("format").and_then(Value::as_str) == Some("date-time");
    if is_string && !bounded {
        found.push(path.to_string());
    }
    for (name, child) in node
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        unbounded_strings(child, &format!("{path}.{name}"), found);
    }
    for (key, suffix) in [("items", "[]"), ("additionalProperties", "{}")] {
        if let Some(child) = node.get(key).filter(|v| v.is_object()) {
            unbounded_strings(child, &format!("{path}{suffix}"), found);
        }
    }
}

#[test]
fn every_string_in_a_spec_has_a_max_length() {
    for crd in sectordb::crdgen::all() {
        let schema = serde_json::to_value(
            &crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema,
        )
        .unwrap();
        let mut found = Vec::new();
        unbounded_strings(&schema["properties"]["spec"], ".spec", &mut found);
        assert!(
            found.is_empty(),
            "{}: {found:?}",
            crd.metadata.name.unwrap_or_default()
        );
    }
}

#[test]
fn schemas_are_structural_and_described() {
    for crd in sectordb::crdgen::all() {
        let name = crd.metadata.name.clone().unwrap();
        for version in &crd.spec.versions {
            let schema =
                serde_json::to_value(&version.schema.as_ref().unwrap().open_api_v3_schema).unwrap();
            let mut problems = Vec::new();
            check(&schema, "", &mut problems);
            for field in ["spec", "status"] {
                if schema["properties"][field]["description"]
                    .as_str()
                    .is_none_or(str::is_empty)
                {
                    problems.push(format!(".{field}: no description"));
                }
            }
            assert!(problems.is_empty(), "{name}: {problems:#?}");
            assert!(
                version
                    .subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some(),
                "{name}: no status subresource"
            );
            assert!(
                !version
                    .additional_printer_columns
                    .as_deref()
                    .unwrap_or_default()
                    .is_empty(),
                "{name}: no printer columns"
            );
        }
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["sectordb".to_string()][..]),
            "{name}"
        );
        assert_eq!(
            crd.spec.names.short_names.as_ref().map(Vec::len),
            Some(1),
            "{name}"
        );
    }
}

#[test]
fn cross_field_rules_are_cel_rules_in_the_crds() {
    let yaml: String = sectordb::crdgen::all()
        .iter()
        .map(sectordb::crdgen::to_yaml)
        .collect();
    for rule in [
        "self == oldSelf",
        "self.bootstrap == oldSelf.bootstrap",
        "quantity(self.size).compareTo(quantity(oldSelf.size)) >= 0",
        "self.tls.mode == 'Required'",
        "(self.mode == 'Replicate') == has(self.replicateInto)",
    ] {
        assert!(yaml.contains(rule), "missing CEL rule {rule}");
    }
}

#[test]
fn schema_patterns_are_the_ones_validate_uses() {
    let yaml = sectordb::crdgen::to_yaml(&sectordb::crdgen::all()[0]);
    for pattern in [
        sectordb::api::common::AGENCY_CODE_PATTERN,
        sectordb::api::common::SQL_IDENTIFIER_PATTERN,
    ] {
        assert!(
            yaml.contains(pattern),
            "pattern {pattern} is not in the SectorDatabase schema"
        );
    }
}

#[test]
fn the_structural_check_finds_what_it_looks_for() {
    let bad = serde_json::json!({
        "type": "object",
        "properties": {
            "spec": {"type": "object", "description": "d", "properties": {
                "count": {"type": "integer", "format": "uint32", "description": "d"},
                "loose": {"description": "d"},
                "bare": {"type": "string"},
                "choice": {"type": "string", "description": "d", "oneOf": [{"enum": ["a"]}]},
                "maybe": {"type": "string", "description": "d", "nullable": true, "enum": ["a", null]}
            }}
        }
    });
    let mut problems = Vec::new();
    check(&bad, "", &mut problems);
    assert_eq!(
        problems,
        [
            ".spec.bare: no description",
            ".spec.choice: uses oneOf",
            ".spec.count: format uint32",
            ".spec.loose: no type",
            ".spec.maybe: null among enum values (Kubernetes 1.20 refuses the CRD)",
        ]
    );
}
