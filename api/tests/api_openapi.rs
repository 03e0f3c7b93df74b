//! Keeps resources/api/openapi.json true: its paths and methods are
//! exactly the router's, and every documented operation, sent with its
//! documented example against a running brique (in the phase it documents),
//! is answered with a documented status, successfully, and with a body that
//! matches the documented schema.

// Test helpers outside #[test] functions fail loudly too.
#![allow(clippy::unwrap_used)]

mod common;

use brique_api::routes::ROUTES;
use brique_tests::kvm_available;
use common::Brique;
use serde_json::Value;
use std::collections::BTreeSet;

fn document() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../resources/api/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `/drives/{drive_id}` and the router's `/drives/{id}` are the same route.
fn normalize(path: &str) -> String {
    path.split('/')
        .map(|s| if s.starts_with('{') { "{id}" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

struct Operation {
    method: String,
    path_template: String,
    spec: Value,
}

fn operations(doc: &Value) -> Vec<Operation> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, spec) in item.as_object().unwrap() {
            ops.push(Operation {
                method: method.to_uppercase(),
                path_template: path.clone(),
                spec: spec.clone(),
            });
        }
    }
    ops
}

#[test]
fn documented_routes_are_exactly_the_served_routes() {
    let doc = document();
    let documented: BTreeSet<(String, String)> = operations(&doc)
        .iter()
        .map(|op| (op.method.clone(), normalize(&op.path_template)))
        .collect();
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .flat_map(|(path, methods)| methods.iter().map(|m| (m.to_string(), path.to_string())))
        .collect();
    assert_eq!(documented, served);
}

/// Checks `value` against `schema` (the subset of JSON Schema the document
/// uses: $ref, type, required, properties, additionalProperties, enum, items).
fn check(doc: &Value, schema: &Value, value: &Value, at: &str) {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.trim_start_matches("#/components/schemas/");
        return check(doc, &doc["components"]["schemas"][name], value, at);
    }
    match schema["type"].as_str() {
        Some("object") => {
            let object = value
                .as_object()
                .unwrap_or_else(|| panic!("{at}: not an object: {value}"));
            for required in schema["required"].as_array().into_iter().flatten() {
                let key = required.as_str().unwrap();
                assert!(object.contains_key(key), "{at}: missing {key} in {value}");
            }
            let properties = schema["properties"].as_object();
            for (key, field) in object {
                match properties.and_then(|p| p.get(key)) {
                    Some(field_schema) => check(doc, field_schema, field, &format!("{at}.{key}")),
                    None => assert!(
                        schema["additionalProperties"] != Value::Bool(false),
                        "{at}: undocumented field {key}"
                    ),
                }
            }
        }
        Some("array") => {
            for (i, item) in value
                .as_array()
                .unwrap_or_else(|| panic!("{at}: not an array"))
                .iter()
                .enumerate()
            {
                check(doc, &schema["items"], item, &format!("{at}[{i}]"));
            }
        }
        Some("string") => {
            let text = value
                .as_str()
                .unwrap_or_else(|| panic!("{at}: not a string: {value}"));
            if let Some(allowed) = schema["enum"].as_array() {
                assert!(
                    allowed.iter().any(|a| a == text),
                    "{at}: {text} not in {allowed:?}"
                );
            }
        }
        Some("integer") => assert!(
            value.is_u64() || value.is_i64(),
            "{at}: not an integer: {value}"
        ),
        Some("boolean") => assert!(value.is_boolean(), "{at}: not a boolean: {value}"),
        other => panic!("{at}: schema type {other:?} not handled by this checker"),
    }
}

/// Sends `op`'s example; returns the status after checking it is
/// documented and, for JSON answers, that the body matches its schema.
fn send(vm: &mut Brique, doc: &Value, op: &Operation) -> u16 {
    let dir = vm.dir.display().to_string();
    send_with_dir(vm, doc, op, &dir)
}

/// As [`send`], with `${DIR}` in the example standing for `dir`.
fn send_with_dir(vm: &mut Brique, doc: &Value, op: &Operation, dir: &str) -> u16 {
    let mut path = op.path_template.clone();
    for param in op.spec["parameters"].as_array().into_iter().flatten() {
        let name = param["name"].as_str().unwrap();
        path = path.replace(&format!("{{{name}}}"), param["example"].as_str().unwrap());
    }
    let example = &op.spec["requestBody"]["content"]["application/json"]["example"];
    let body = if example.is_null() {
        String::new()
    } else {
        example
            .to_string()
            .replace("${KERNEL}", &vm.path("tiny.elf"))
            .replace("${DISK2}", &vm.path("bigger.img"))
            .replace("${DISK}", &vm.path("disk.img"))
            .replace("${DIR}", dir)
    };
    let response = vm.call(&op.method, &path, &body);
    let documented = &op.spec["responses"][response.status.to_string()];
    assert!(
        documented.is_object(),
        "{} {path}: status {} is not documented ({})",
        op.method,
        response.status,
        response.body
    );
    let schema = &documented["content"]["application/json"]["schema"];
    if schema.is_null() {
        assert!(
            response.body.is_empty(),
            "{} {path}: undocumented body",
            op.method
        );
    } else {
        let value: Value = serde_json::from_str(&response.body).unwrap();
        check(doc, schema, &value, &format!("{} {path}", op.method));
    }
    response.status
}

#[test]
fn every_documented_operation_answers_as_documented() {
    let doc = document();
    let ops = operations(&doc);
    let phase = |op: &Operation| op.spec["x-brique-phase"].as_str().unwrap().to_owned();

    // Before InstanceStart: pre-boot and any-time operations succeed (metrics
    // first, so that the FlushMetrics example has somewhere to write);
    // runtime ones are refused with a documented 400.
    let mut vm = Brique::start("openapi-preboot", &[]);
    let mut ordered: Vec<&Operation> = ops
        .iter()
        .filter(|op| op.path_template == "/metrics")
        .collect();
    ordered.extend(ops.iter().filter(|op| op.path_template != "/metrics"));
    for op in &ordered {
        let status = send(&mut vm, &doc, op);
        // Snapshots: no paused microVM yet, and no snapshot file to load.
        let expect_ok = !matches!(phase(op).as_str(), "runtime" | "paused" | "fresh");
        assert_eq!(
            status < 300,
            expect_ok,
            "{} {} before start: {status}",
            op.method,
            op.path_template
        );
    }
    drop(vm);

    if !kvm_available() {
        return;
    }
    // After InstanceStart (tiny guest): runtime and any-time operations
    // succeed, pre-boot ones are refused with a documented 400.
    let mut vm = Brique::start("openapi-runtime", &[]);
    vm.start_tiny_guest();
    vm.ok(
        "PUT",
        "/metrics",
        &format!(r#"{{"metrics_path": "{}"}}"#, vm.path("m.json")),
    );
    for op in &ops {
        if op.path_template == "/metrics" {
            continue; // set once, above
        }
        let status = send(&mut vm, &doc, op);
        let expect_ok = match phase(op).as_str() {
            // Snapshots: created below once paused; loaded in a fresh brique.
            "pre-boot" | "paused" | "fresh" => false,
            // This VM has no interface to update (that needs a tap device).
            _ if op.path_template == "/network-interfaces/{iface_id}" => false,
            _ => true,
        };
        assert_eq!(
            status < 300,
            expect_ok,
            "{} {} after start: {status}",
            op.method,
            op.path_template
        );
    }
    assert_eq!(vm.state(), "Paused", "the PATCH /vm example pauses");

    // Paused: the snapshot example succeeds; a fresh brique loads it.
    let by_phase = |wanted: &str| {
        ops.iter()
            .filter(|op| phase(op) == wanted)
            .collect::<Vec<_>>()
    };
    for op in by_phase("paused") {
        assert_eq!(send(&mut vm, &doc, op), 204, "{}", op.path_template);
    }
    let snapshot_dir = vm.dir.display().to_string();
    let mut fresh = Brique::start("openapi-fresh", &[]);
    for op in by_phase("fresh") {
        assert_eq!(
            send_with_dir(&mut fresh, &doc, op, &snapshot_dir),
            204,
            "{}",
            op.path_template
        );
    }
    assert_eq!(fresh.state(), "Running", "the load example resumes");
}
