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

    let mut files = Vec::new();
    for d in dirs {
        walk(d, &mut files)?;
    }
    files.sort();
    let mut failures = Vec::new();
    let mut update_manifests = 0;
    for f in &files {
        let doc = read_json(f)?;
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
            "schema: {} manifests checked against {IMPORT}, {update_manifests} against {UPDATE}, {refused} invalid fixtures refused by it",
            files.len() - update_manifests
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
