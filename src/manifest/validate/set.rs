//! Checks across documents: a parent with its children, and payload files on disk.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::finding::{Findings, JsonPath};
use crate::hash::{HashError, Sha256, hash_files};
use crate::limits::MAX_IMPORT_ITEMS;
use crate::manifest::{ImportManifest, Step};
use crate::reporter::Reporter;

/// A manifest as read from disk, for checks across several manifests.
#[derive(Debug)]
pub struct Loaded<'a> {
    /// Where it was read from (for messages).
    pub source: &'a Path,
    /// The typed manifest (only manifests without errors take part in set checks).
    pub manifest: &'a ImportManifest,
}

/// Checks a parent together with its children: every referenced update is among them, children
/// have no reference steps, update ids are unique and the set fits one import request.
///
/// Returns findings per manifest, in input order.
pub fn validate_set(set: &[Loaded<'_>]) -> Vec<Findings> {
    let mut out: Vec<Findings> = set.iter().map(|_| Findings::new()).collect();
    let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
    for (i, m) in set.iter().enumerate() {
        let id = m.manifest.update_id.to_string();
        if let Some(first) = by_id.get(&id) {
            out[i].error(
                "update-id-duplicate",
                &JsonPath::root().key("updateId"),
                format!("update {id} is also defined by {}", set[*first].source.display()),
            );
        } else {
            by_id.insert(id, i);
        }
    }
    let mut referenced: HashSet<usize> = HashSet::new();
    for (i, m) in set.iter().enumerate() {
        for (s, step) in m.manifest.instructions.steps.iter().enumerate() {
            let Step::Reference(r) = step else { continue };
            let path = JsonPath::root().key("instructions").key("steps").index(s).key("updateId");
            match by_id.get(&r.update_id.to_string()) {
                Some(j) => {
                    referenced.insert(*j);
                }
                None => out[i].error_hint(
                    "reference-missing",
                    &path,
                    format!(
                        "references update {}, which is not among the manifests given",
                        r.update_id
                    ),
                    "pass the child's import manifest too, or fix provider/name/version",
                ),
            }
        }
    }
    for j in referenced {
        let child = set[j].manifest;
        for (s, step) in child.instructions.steps.iter().enumerate() {
            if matches!(step, Step::Reference(_)) {
                out[j].error_hint(
                    "child-reference",
                    &JsonPath::root().key("instructions").key("steps").index(s),
                    format!("child update {} has a reference step; ADU allows only one level of children", child.update_id),
                    "move the step into the parent",
                );
            }
        }
        if child.is_deployable != Some(false) {
            out[j].warning(
                "child-deployable",
                &JsonPath::root().key("isDeployable"),
                format!("child update {} is deployable on its own", child.update_id),
                "set \"isDeployable\": false (otaforge manifest init --not-deployable) unless it may be deployed alone",
            );
        }
    }
    // The same compatibility set may belong to only one provider/name pair in an instance.
    let mut compat_owner: HashMap<String, (String, usize)> = HashMap::new();
    for (i, m) in set.iter().enumerate() {
        let pn = format!("{}/{}", m.manifest.update_id.provider(), m.manifest.update_id.name());
        for (c, compat) in m.manifest.compatibility.iter().enumerate() {
            let mut pairs: Vec<String> = compat.iter().map(|(k, v)| format!("{k}={v}")).collect();
            pairs.sort();
            let key = pairs.join(",");
            match compat_owner.get(&key) {
                Some((owner, _)) if *owner != pn => out[i].warning(
                    "compatibility-owner",
                    &JsonPath::root().key("compatibility").index(c),
                    format!("compatibility {{{key}}} is also used by {owner}"),
                    "ADU refuses to import the same compatibility set under two provider/name pairs; make them differ",
                ),
                Some(_) => {}
                None => {
                    compat_owner.insert(key, (pn.clone(), i));
                }
            }
        }
    }
    if set.len() > MAX_IMPORT_ITEMS {
        out[0].warning(
            "import-items",
            &JsonPath::root(),
            format!(
                "{} manifests do not fit one import request (at most {MAX_IMPORT_ITEMS})",
                set.len()
            ),
            "import a parent with at most 10 children per request",
        );
    }
    out
}

/// Recomputes the size and SHA-256 of every payload and related file found in `dir` and compares
/// them with what the manifest declares.
pub fn check_payloads(
    manifest: &ImportManifest,
    dir: &Path,
    jobs: usize,
    reporter: &dyn Reporter,
) -> Findings {
    let mut f = Findings::new();
    let mut entries: Vec<(JsonPath, &str, u64, &Sha256)> = Vec::new();
    for (i, file) in manifest.files.iter().enumerate() {
        let p = JsonPath::root().key("files").index(i);
        entries.push((p.clone(), &file.filename, file.size_in_bytes, &file.hashes.sha256));
        for (j, r) in file.related_files.iter().enumerate() {
            entries.push((
                p.key("relatedFiles").index(j),
                &r.filename,
                r.size_in_bytes,
                &r.hashes.sha256,
            ));
        }
    }
    let paths: Vec<PathBuf> = entries.iter().map(|(_, name, _, _)| dir.join(name)).collect();
    let results = hash_files(&paths, jobs, reporter);
    for ((p, name, size, sha), result) in entries.into_iter().zip(results) {
        match result {
            Err(HashError::Read { path, source })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                f.error_hint(
                    "payload-missing",
                    &p.key("filename"),
                    format!("payload file {} does not exist", path.display()),
                    format!("put '{name}' in {} or pass the right --payload-dir", dir.display()),
                )
            }
            Err(e) => f.error("payload-read", &p.key("filename"), e.to_string()),
            Ok(d) => {
                if d.size != size {
                    f.error_hint(
                        "payload-size",
                        &p.key("sizeInBytes"),
                        format!("manifest says {size} bytes, {} has {}", d.path.display(), d.size),
                        "regenerate the manifest with otaforge manifest init, or use the file it was made from",
                    );
                }
                if d.sha256 != *sha {
                    f.error_hint(
                        "payload-sha256",
                        &p.key("hashes").key("sha256"),
                        format!("manifest says {sha}, {} has {}", d.path.display(), d.sha256),
                        "the file changed after the manifest was made; regenerate the manifest",
                    );
                }
            }
        }
    }
    f
}
