//! Checks import manifests against the official ADU JSON schemas (draft-07, SchemaStore),
//! which are kept outside the repository in `shared/schemas`.
//!
//! Every `*.importmanifest.json` found must pass the schema. Fixtures under
//! `testdata/manifests/invalid` whose `expected.json` entry says `"schema": "invalid"` must fail
//! it: that cross-checks our own validator against the official schema from both sides.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde_json::Value;

const IMPORT: &str = "azure-deviceupdate-import-manifest-5.0.json";
const UPDATE: &str = "azure-deviceupdate-update-manifest-5.json";
const DEFINITIONS: &str = "azure-deviceupdate-manifest-definitions-5.0.json";
const BASE: &str = "https://json.schemastore.org/";
/// IoT Edge deployment manifests (`*.edgedeployment.json`, written by the edge tests).
const EDGE: &str = "azure-iot-edge-deployment-2.0.json";
const EDGE_AGENT: &str = "azure-iot-edgeagent-deployment-1.1.json";
const EDGE_HUB_11: &str = "azure-iot-edgehub-deployment-1.1.json";
const EDGE_HUB_12: &str = "azure-iot-edgehub-deployment-1.2.json";

pub(crate) fn run(dirs: &[PathBuf]) -> anyhow::Result<()> {
    let shared = crate::shared()?;
    let dirs = if dirs.is_empty() { vec![crate::root().join("testdata")] } else { dirs.to_vec() };
    check(&shared, &dirs)
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{} is not JSON", path.display()))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.to_string_lossy().ends_with(".importmanifest.json")
            || path.to_string_lossy().ends_with(".updatemanifest.json")
            || path.to_string_lossy().ends_with(".edgedeployment.json")
        {
            out.push(path);
        }
    }
    Ok(())
}

pub(crate) fn check(shared: &Path, dirs: &[PathBuf]) -> anyhow::Result<()> {
    let schemas = shared.join("schemas");
    let import = read_json(&schemas.join(IMPORT))?;
    let defs = read_json(&schemas.join(DEFINITIONS))?;
    let registry = jsonschema::Registry::new()
        .add(format!("{BASE}{DEFINITIONS}"), defs)
        .context("cannot register the definitions schema")?
        .prepare()
        .context("cannot prepare the schema registry")?;
    let validator = jsonschema::options()
        .with_registry(&registry)
        .build(&import)
        .context("cannot compile the import manifest schema")?;
    // Update manifests (what serve writes into device twins) against their own schema.
    let update = read_json(&schemas.join(UPDATE))?;
    let update_validator = jsonschema::options()
        .with_registry(&registry)
        .build(&update)
        .context("cannot compile the update manifest schema")?;

    // Edge deployments: the whole manifest, then each runtime module's desired properties
    // against the schema of the version it declares.
    let compile = |name: &str| -> anyhow::Result<jsonschema::Validator> {
        jsonschema::options()
            .build(&read_json(&schemas.join(name))?)
            .with_context(|| format!("cannot compile {name}"))
    };
    let edge = compile(EDGE)?;
    let edge_agent = compile(EDGE_AGENT)?;
    let (edge_hub_11, edge_hub_12) = (compile(EDGE_HUB_11)?, compile(EDGE_HUB_12)?);

    let mut files = Vec::new();
    for d in dirs {
        walk(d, &mut files)?;
    }
    files.sort();
    let mut failures = Vec::new();
    let mut update_manifests = 0;
    let mut edge_manifests = 0;
    for f in &files {
        let doc = read_json(f)?;
        if f.to_string_lossy().ends_with(".edgedeployment.json") {
            edge_manifests += 1;
            let mc = &doc["modulesContent"];
            let agent = serde_json::json!({"$edgeAgent": mc["$edgeAgent"]});
            let hub = serde_json::json!({"$edgeHub": mc["$edgeHub"]});
            let hub_version = &mc["$edgeHub"]["properties.desired"]["schemaVersion"];
            let hub_schema = if hub_version == "1.2" { &edge_hub_12 } else { &edge_hub_11 };
            let mut errors: Vec<String> =
                edge.iter_errors(&doc).map(|e| format!("{}: {e}", e.instance_path())).collect();
            for (v, d) in [(&edge_agent, &agent), (hub_schema, &hub)] {
                errors.extend(v.iter_errors(d).map(|e| format!("{}: {e}", e.instance_path())));
            }
            if !errors.is_empty() {
                failures.push(format!("{}:\n    {}", f.display(), errors.join("\n    ")));
            }
            continue;
        }
        let v = if f.to_string_lossy().ends_with(".updatemanifest.json") {
            update_manifests += 1;
            &update_validator
        } else {
            &validator
        };
        let errors: Vec<String> =
            v.iter_errors(&doc).map(|e| format!("{}: {e}", e.instance_path())).collect();
        if !errors.is_empty() {
            failures.push(format!("{}:\n    {}", f.display(), errors.join("\n    ")));
        }
    }

    // Invalid fixtures the official schema must refuse too.
    let invalid_dir = crate::root().join("testdata/manifests/invalid");
    let expected = read_json(&invalid_dir.join("expected.json"))?;
    let mut refused = 0;
    for (name, exp) in expected.as_object().into_iter().flatten() {
        if exp.get("schema").and_then(Value::as_str) != Some("invalid") {
            continue;
        }
        let path = invalid_dir.join(name);
        let Ok(doc) = read_json(&path) else { continue };
        if validator.is_valid(&doc) {
            failures.push(format!(
                "{}: the official schema accepts it, but expected.json says it must not",
                path.display()
            ));
        }
        refused += 1;
    }
    {
        eprintln!(
            "schema: {} manifests checked against {IMPORT}, {update_manifests} against {UPDATE}, {edge_manifests} Edge deployments against {EDGE} and the runtime modules' schemas, {refused} invalid fixtures refused by it",
            files.len() - update_manifests - edge_manifests
        );
    }
    if files.is_empty() {
        bail!(
            "no *.importmanifest.json found in {dirs:?}; the test suite should have produced some"
        );
    }
    if !failures.is_empty() {
        bail!("official schema check failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}
