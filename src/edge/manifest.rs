//! IoT Edge deployment manifests (edge.md §1, §3.4): building one from a template as VS Code and
//! iotedgedev users write it, and validating one as IoT Hub and the Edge runtime will read it,
//! every problem at once with its JSON path.
//!
//! **Build** ([`build`]): `${VAR}` placeholders are replaced from the variables given (an env
//! file, then the environment); `${MODULES.NAME}` and `${MODULES.NAME.PLATFORM}` image
//! placeholders from the images given; `createOptions` written as a JSON object is serialized
//! compactly and cut into 512-character pieces `createOptions`, `createOptions01`, … (the
//! runtime's rule: characters, not bytes, two-digit suffixes, at most 100 pieces; more than 8 is
//! warned about, iotedgedev's limit); iotedgedev's `$schema-template` key is dropped. The
//! output is the template's key order, so the same input gives the same bytes.
//!
//! **Validate** ([`validate`]): beyond what the official schemas check, what the runtime
//! refuses: schema versions it does not accept and features newer than the declared version
//! (`startupOrder` and `imagePullPolicy` need edgeAgent 1.1, the highest it takes; route objects
//! with priority and TTL edgeHub 1.1; `mqttBroker` 1.2; `integrity` 1.3), routes that do not
//! parse or name modules that do not exist, createOptions pieces misnumbered, too long, or not
//! joining into a JSON object, malformed image references, more than 50 modules, twins over
//! 32 KB, twin keys and depths IoT Hub refuses, and registry passwords written inline (warned).
//! Layered deployments use the dot-path form with their own rules.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::route::Route;
use crate::finding::{Findings, JsonPath, json_kind};

/// What stops a build.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The template or manifest is not JSON.
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Placeholders nothing gives a value for.
    #[error("no value for {}: give them in the environment or the env file (NAME=value lines)", .0.join(", "))]
    Unresolved(Vec<String>),
    /// An image placeholder names a module no image was given for.
    #[error("no image for {}: give --image NAME=REFERENCE for each", .0.join(", "))]
    NoImage(Vec<String>),
    /// createOptions that cannot be written.
    #[error("{path}: {message}")]
    CreateOptions {
        /// Where.
        path: String,
        /// What.
        message: String,
    },
}

/// The runtime's piece size for createOptions (characters).
pub const CHUNK: usize = 512;
/// The most pieces the runtime reads.
pub const MAX_CHUNKS: usize = 100;
/// The most pieces iotedgedev writes (warned beyond).
const IOTEDGEDEV_CHUNKS: usize = 8;
/// User modules per deployment.
pub const MAX_MODULES: usize = 50;
/// Desired properties of one twin, as IoT Hub counts them (`iothub::limits`).
pub const MAX_TWIN_BYTES: usize = crate::iothub::limits::MAX_PROPERTIES_BYTES;

/// Replaces `${VAR}` and `${MODULES.NAME[.PLATFORM]}` in the template text, then serializes and
/// chunks every `createOptions` written as an object. `vars` gives variables; `images` gives the
/// image of a module by `NAME` or `NAME.PLATFORM`. Returns the manifest and the warnings.
pub fn build(
    template: &str,
    vars: &dyn Fn(&str) -> Option<String>,
    images: &BTreeMap<String, String>,
) -> Result<(Value, Findings), ManifestError> {
    let mut out = String::with_capacity(template.len());
    let mut missing = Vec::new();
    let mut no_image = Vec::new();
    let mut rest = template;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[i..]);
            rest = "";
            break;
        };
        let name = &after[..end];
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid {
            out.push_str("${");
            rest = after;
            continue;
        }
        if let Some(module) = name.strip_prefix("MODULES.") {
            match images.get(module) {
                Some(img) => out.push_str(&json_escape(img)),
                None => no_image.push(module.to_owned()),
            }
        } else {
            match vars(name) {
                Some(v) => out.push_str(&json_escape(&v)),
                None => missing.push(name.to_owned()),
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    for list in [&mut missing, &mut no_image] {
        list.sort();
        list.dedup();
    }
    if !missing.is_empty() {
        return Err(ManifestError::Unresolved(missing));
    }
    if !no_image.is_empty() {
        return Err(ManifestError::NoImage(no_image));
    }
    let mut doc: Value = serde_json::from_str(&out)?;
    if let Some(o) = doc.as_object_mut() {
        o.shift_remove("$schema-template");
    }
    let mut warnings = Findings::new();
    let root = JsonPath::root().key("modulesContent").key("$edgeAgent").key("properties.desired");
    if let Some(desired) = doc
        .get_mut("modulesContent")
        .and_then(|m| m.get_mut("$edgeAgent"))
        .and_then(|a| a.get_mut("properties.desired"))
    {
        for section in ["systemModules", "modules"] {
            let Some(mods) = desired.get_mut(section).and_then(Value::as_object_mut) else {
                continue;
            };
            for (name, m) in mods.iter_mut() {
                let Some(settings) = m.get_mut("settings").and_then(Value::as_object_mut) else {
                    continue;
                };
                let path = root.key(section).key(name).key("settings");
                chunk_create_options(settings, &path, &mut warnings)?;
            }
        }
    }
    Ok((doc, warnings))
}

/// The text of a JSON string without its quotes (placeholders sit inside JSON strings).
fn json_escape(s: &str) -> String {
    let quoted = Value::String(s.to_owned()).to_string();
    quoted[1..quoted.len() - 1].to_owned()
}

/// Replaces an object `createOptions` by its compact JSON cut into numbered pieces.
fn chunk_create_options(
    settings: &mut Map<String, Value>,
    path: &JsonPath,
    warnings: &mut Findings,
) -> Result<(), ManifestError> {
    let Some(opts) = settings.get("createOptions") else { return Ok(()) };
    let text = match opts {
        Value::Object(_) => opts.to_string(),
        // Already a string: rechunk only when it is one piece too long (a hand-written one).
        Value::String(s) if s.chars().count() > CHUNK => s.clone(),
        _ => return Ok(()),
    };
    let chars: Vec<char> = text.chars().collect();
    let pieces: Vec<String> = chars.chunks(CHUNK).map(|c| c.iter().collect()).collect();
    if pieces.len() > MAX_CHUNKS {
        return Err(ManifestError::CreateOptions {
            path: path.key("createOptions").to_string(),
            message: format!(
                "is {} characters: more than the runtime's {MAX_CHUNKS} pieces of {CHUNK}",
                chars.len()
            ),
        });
    }
    if pieces.len() > IOTEDGEDEV_CHUNKS {
        warnings.warning(
            "create-options-size",
            &path.key("createOptions"),
            format!("is {} pieces of {CHUNK} characters", pieces.len()),
            "the runtime reads up to 100; iotedgedev and some UIs stop at 8 (4 KB)",
        );
    }
    settings.retain(|k, _| !is_chunk_key(k));
    for (i, p) in pieces.into_iter().enumerate() {
        let key = if i == 0 { "createOptions".to_owned() } else { format!("createOptions{i:02}") };
        settings.insert(key, Value::String(p));
    }
    Ok(())
}

/// Keys the runtime reads as createOptions pieces (case-insensitive `createoptions[0-9]*`).
fn is_chunk_key(k: &str) -> bool {
    let l = k.to_ascii_lowercase();
    l.strip_prefix("createoptions").is_some_and(|d| d.chars().all(|c| c.is_ascii_digit()))
}

/// A `major.minor[.patch]` schema version.
fn version(s: &str) -> Option<(u64, u64)> {
    let mut it = s.split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    match it.next() {
        None => {}
        Some(p) => {
            p.parse::<u64>().ok()?;
        }
    }
    if it.next().is_some() {
        return None;
    }
    Some((major, minor))
}

/// What kind of deployment a manifest is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A base (standard) deployment: the whole desired properties of both runtime modules.
    Base,
    /// A layered deployment: dot paths into them, above a base.
    Layered,
}

/// Checks a manifest (the `modulesContent` document, or a configuration's `content` holding
/// it) and returns every finding. Not JSON is an error, not a finding.
pub fn validate(bytes: &[u8], kind: Kind) -> Result<Findings, ManifestError> {
    let mut f = crate::finding::duplicate_keys(bytes);
    let doc: Value = serde_json::from_slice(bytes)?;
    let root = JsonPath::root();
    let Some(obj) = f.expect_object(&doc, &root) else { return Ok(f) };
    let (content, path) = if let Some(c) = obj.get("content") {
        (c, root.key("content"))
    } else {
        (&doc, root.clone())
    };
    let Some(c) = f.expect_object(content, &path) else { return Ok(f) };
    let (mc, mc_path) = match (c.get("modulesContent"), c.get("moduleContent")) {
        (Some(m), _) => (m, path.key("modulesContent")),
        (None, Some(m)) => {
            f.warning(
                "legacy-key",
                &path.key("moduleContent"),
                "`moduleContent` is the legacy name of an Edge deployment's content",
                "rename it `modulesContent` (az CLI accepts the old name with a warning)",
            );
            (m, path.key("moduleContent"))
        }
        (None, None) => {
            f.error_hint(
                "required",
                &path,
                "has no `modulesContent`",
                "an Edge deployment manifest is {\"modulesContent\": {\"$edgeAgent\": …, \"$edgeHub\": …}}",
            );
            return Ok(f);
        }
    };
    let Some(mc) = f.expect_object(mc, &mc_path) else { return Ok(f) };
    match kind {
        Kind::Base => base(&mut f, mc, &mc_path),
        Kind::Layered => layered(&mut f, mc, &mc_path),
    }
    Ok(f)
}

fn base(f: &mut Findings, mc: &Map<String, Value>, path: &JsonPath) {
    let mut modules: Vec<String> = Vec::new();
    for twin in ["$edgeAgent", "$edgeHub"] {
        if !mc.contains_key(twin) {
            f.error_hint(
                "required",
                &path.key(twin),
                format!("{twin} is missing"),
                "a base deployment sets the desired properties of both $edgeAgent and $edgeHub (use --layered for a layer)",
            );
        }
    }
    if let Some(d) = desired(f, mc, "$edgeAgent", path) {
        let p = path.key("$edgeAgent").key("properties.desired");
        agent(f, d, &p, &mut modules);
        twin_size(f, d, &p);
    }
    if let Some(d) = desired(f, mc, "$edgeHub", path) {
        let p = path.key("$edgeHub").key("properties.desired");
        hub(f, d, &p, Some(&modules));
        twin_size(f, d, &p);
    }
    module_twins(f, mc, path, Some(&modules), false);
}

/// `mc[twin]["properties.desired"]` as an object.
fn desired<'a>(
    f: &mut Findings,
    mc: &'a Map<String, Value>,
    twin: &str,
    path: &JsonPath,
) -> Option<&'a Map<String, Value>> {
    let t = f.expect_object(mc.get(twin)?, &path.key(twin))?;
    let p = path.key(twin);
    let Some(d) = t.get("properties.desired") else {
        f.error_hint(
            "required",
            &p.key("properties.desired"),
            "is missing",
            format!("{twin} content is {{\"properties.desired\": {{…}}}} in a base deployment"),
        );
        return None;
    };
    f.unknown_keys(t, &p, &["properties.desired"], twin);
    f.expect_object(d, &p.key("properties.desired"))
}

fn agent(f: &mut Findings, d: &Map<String, Value>, p: &JsonPath, modules: &mut Vec<String>) {
    let ver = schema_version(f, d, p, "edgeAgent", (1, 1));
    match d.get("runtime").and_then(Value::as_object) {
        None => f.error(
            "required",
            &p.key("runtime"),
            "edgeAgent needs `runtime` ({\"type\": \"docker\", \"settings\": {…}})",
        ),
        Some(rt) => {
            let rp = p.key("runtime");
            if rt.get("type").and_then(Value::as_str) != Some("docker") {
                f.error("runtime-type", &rp.key("type"), "must be \"docker\"");
            }
            if let Some(creds) = rt
                .get("settings")
                .and_then(|s| s.get("registryCredentials"))
                .and_then(Value::as_object)
            {
                let cp = rp.key("settings").key("registryCredentials");
                for (name, c) in creds {
                    registry(f, name, c, &cp.key(name));
                }
            }
        }
    }
    if d.contains_key("integrity") {
        f.warning(
            "integrity",
            &p.key("integrity"),
            "the runtime reads a signed edgeAgent manifest, but az CLI's 1.1 schema rejects `integrity` here",
            "deploy it with otaforge or the REST API, not `az iot edge deployment create`",
        );
    }
    let sys = p.key("systemModules");
    match d.get("systemModules").and_then(Value::as_object) {
        None => {
            f.error("required", &sys, "edgeAgent needs `systemModules` with edgeAgent and edgeHub")
        }
        Some(s) => {
            for name in ["edgeAgent", "edgeHub"] {
                match s.get(name) {
                    None => f.error(
                        "required",
                        &sys.key(name),
                        format!("systemModules.{name} is missing"),
                    ),
                    Some(m) => module(f, name, m, &sys.key(name), ver, true),
                }
            }
            if let Some(h) = s.get("edgeHub") {
                if h.get("status").and_then(Value::as_str).is_some_and(|x| x != "running") {
                    f.error(
                        "system-module",
                        &sys.key("edgeHub").key("status"),
                        "edgeHub's status must be \"running\"",
                    );
                }
                if h.get("restartPolicy").and_then(Value::as_str).is_some_and(|x| x != "always") {
                    f.error(
                        "system-module",
                        &sys.key("edgeHub").key("restartPolicy"),
                        "edgeHub's restartPolicy must be \"always\"",
                    );
                }
            }
            if s.get("edgeAgent").is_some_and(|a| a.get("startupOrder").is_some()) {
                f.error_hint(
                    "system-module",
                    &sys.key("edgeAgent").key("startupOrder"),
                    "edgeAgent has no startupOrder: it always starts first",
                    "remove it",
                );
            }
        }
    }
    if let Some(m) = d.get("modules")
        && let Some(mods) = f.expect_object(m, &p.key("modules"))
    {
        if mods.len() > MAX_MODULES {
            f.error(
                "module-count",
                &p.key("modules"),
                format!("has {} modules; a deployment holds at most {MAX_MODULES}", mods.len()),
            );
        }
        for (name, m) in mods {
            let mp = p.key("modules").key(name);
            module_name(f, name, &mp);
            module(f, name, m, &mp, ver, false);
            modules.push(name.clone());
        }
    }
}

fn module_name(f: &mut Findings, name: &str, p: &JsonPath) {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        f.error(
            "module-name",
            p,
            format!("module name `{name}` may hold only letters, digits, `_` and `-`"),
        );
    }
}

fn registry(f: &mut Findings, name: &str, c: &Value, p: &JsonPath) {
    if name.is_empty() || name.chars().any(|ch| matches!(ch, '.' | '$' | '#' | ' ')) {
        f.error(
            "registry-name",
            p,
            format!("registry credential name `{name}` may not hold `.`, `$`, `#` or spaces"),
        );
    }
    let Some(o) = f.expect_object(c, p) else { return };
    f.unknown_keys(o, p, &["username", "password", "address"], "registry credentials");
    for k in ["username", "password", "address"] {
        match o.get(k) {
            None => f.error("required", &p.key(k), format!("registry credentials need `{k}`")),
            Some(v) => {
                f.expect_string(v, &p.key(k));
            }
        }
    }
    if o.get("address")
        .and_then(Value::as_str)
        .is_some_and(|a| a.chars().any(char::is_whitespace) || a.is_empty())
    {
        f.error("registry-address", &p.key("address"), "must be a registry address without spaces");
    }
    if o.get("password")
        .and_then(Value::as_str)
        .is_some_and(|pw| !pw.is_empty() && !pw.starts_with("${"))
    {
        f.warning(
            "inline-secret",
            &p.key("password"),
            "a registry password is written in the manifest",
            "anyone who can read the deployment reads it: keep ${VAR} in the template and build with the secret from the environment, and keep the built manifest out of the repository",
        );
    }
}

/// Whether the runtime's container engine can pull `image` (`edge::image`'s grammar).
pub fn image_ok(image: &str) -> bool {
    super::image::parse(image).is_ok()
}

fn module(f: &mut Findings, name: &str, m: &Value, p: &JsonPath, ver: (u64, u64), system: bool) {
    let Some(o) = f.expect_object(m, p) else { return };
    match o.get("type").and_then(Value::as_str) {
        Some("docker") => {}
        Some(other) => f.error(
            "module-type",
            &p.key("type"),
            format!("type `{other}`: the runtime takes exactly \"docker\" (case-sensitive)"),
        ),
        None => f.error(
            "required",
            &p.key("type"),
            format!("module `{name}` needs \"type\": \"docker\""),
        ),
    }
    let agent_itself = system && name == "edgeAgent";
    if !agent_itself {
        match o.get("status") {
            None if !system => f.error_hint(
                "required",
                &p.key("status"),
                format!("module `{name}` needs a status"),
                "\"running\" or \"stopped\"",
            ),
            Some(Value::String(s)) if s == "running" || s == "stopped" => {}
            Some(v) => f.error(
                "module-status",
                &p.key("status"),
                format!("status {v} is not \"running\" or \"stopped\""),
            ),
            None => {}
        }
        match o.get("restartPolicy") {
            None => {}
            Some(Value::String(s)) if ["never", "on-failure", "on-unhealthy", "always"].contains(&s.as_str()) => {}
            Some(v) => f.error("restart-policy", &p.key("restartPolicy"), format!("restartPolicy {v} is not never, on-failure, on-unhealthy or always (null is refused; leave it out for on-unhealthy)")),
        }
    }
    if let Some(v) = o.get("imagePullPolicy") {
        if ver < (1, 1) {
            f.error_hint(
                "schema-version",
                &p.key("imagePullPolicy"),
                "imagePullPolicy needs edgeAgent schemaVersion 1.1",
                "set $edgeAgent schemaVersion to \"1.1\"",
            );
        }
        if !matches!(v.as_str(), Some("on-create" | "never")) {
            f.error(
                "image-pull-policy",
                &p.key("imagePullPolicy"),
                format!("imagePullPolicy {v} is not \"on-create\" or \"never\""),
            );
        }
    }
    if let Some(v) = o.get("startupOrder") {
        if ver < (1, 1) {
            f.error_hint(
                "schema-version",
                &p.key("startupOrder"),
                "startupOrder needs edgeAgent schemaVersion 1.1",
                "set $edgeAgent schemaVersion to \"1.1\"",
            );
        }
        if v.as_u64().is_none_or(|n| n > u64::from(u32::MAX)) {
            f.error(
                "startup-order",
                &p.key("startupOrder"),
                format!("startupOrder {v} is not an integer from 0 to 4294967295"),
            );
        }
    }
    if let Some(env) = o.get("env")
        && let Some(env) = f.expect_object(env, &p.key("env"))
    {
        for (k, v) in env {
            let ep = p.key("env").key(k);
            if k.is_empty()
                || k.chars().any(|c| c.is_whitespace() || matches!(c, '+' | '#' | '$' | '.'))
            {
                f.error(
                    "env-name",
                    &ep,
                    format!("environment variable `{k}` may not hold spaces, `+`, `#`, `$` or `.`"),
                );
            }
            match v.get("value") {
                Some(Value::String(_) | Value::Number(_) | Value::Bool(_)) => {}
                Some(x) => f.error(
                    "env-value",
                    &ep.key("value"),
                    format!("must be a string, number or boolean, not {}", json_kind(x)),
                ),
                None => f.error_hint("required", &ep, "has no `value`", "write {\"value\": \"…\"}"),
            }
        }
    }
    let sp = p.key("settings");
    let Some(settings) = o.get("settings").and_then(Value::as_object) else {
        f.error("required", &sp, format!("module `{name}` needs settings with an image"));
        return;
    };
    match settings.get("image") {
        None => f.error("required", &sp.key("image"), format!("module `{name}` needs an image")),
        Some(Value::String(img)) => {
            if let Err(e) = super::image::parse(img) {
                f.error_hint(
                    "image",
                    &sp.key("image"),
                    format!("image `{img}` is not a reference the container engine pulls: {e}"),
                    "[registry[:port]/]repository[:tag][@digest], the repository in lower case, e.g. mcr.microsoft.com/azureiotedge-agent:1.5",
                );
            }
        }
        Some(v) => {
            f.error("type", &sp.key("image"), format!("must be a string, not {}", json_kind(v)))
        }
    }
    create_options(f, settings, &sp);
}

fn create_options(f: &mut Findings, settings: &Map<String, Value>, sp: &JsonPath) {
    let mut keys: Vec<&String> = settings.keys().filter(|k| is_chunk_key(k)).collect();
    if keys.is_empty() {
        return;
    }
    keys.sort_by_key(|k| k.to_ascii_lowercase());
    let mut joined = String::new();
    for (i, k) in keys.iter().enumerate() {
        let kp = sp.key(k);
        let suffix = &k["createOptions".len()..];
        let ok = if i == 0 { suffix.is_empty() } else { suffix.parse::<usize>().ok() == Some(i) };
        if !ok {
            f.error_hint(
                "create-options-chunks",
                &kp,
                format!("`{k}` is not the piece the runtime expects at position {i}"),
                "pieces are createOptions, createOptions01, createOptions02, … with two-digit suffixes and no gap (otaforge edge manifest build writes them)",
            );
            return;
        }
        match settings.get(k.as_str()) {
            Some(Value::String(s)) => {
                let n = s.chars().count();
                if n > CHUNK {
                    f.error_hint(
                        "create-options-chunks",
                        &kp,
                        format!("is {n} characters; a piece holds at most {CHUNK}"),
                        "otaforge edge manifest build cuts createOptions into pieces",
                    );
                }
                joined.push_str(s);
            }
            Some(Value::Object(_)) => {
                f.error_hint(
                    "type",
                    &kp,
                    "is an object; the runtime wants it serialized as a string",
                    "otaforge edge manifest build serializes and chunks it",
                );
                return;
            }
            Some(v) => {
                f.error("type", &kp, format!("must be a string, not {}", json_kind(v)));
                return;
            }
            None => {}
        }
    }
    if keys.len() > MAX_CHUNKS {
        f.error(
            "create-options-chunks",
            &sp.key("createOptions"),
            format!("has {} pieces; the runtime reads at most {MAX_CHUNKS}", keys.len()),
        );
    }
    let t = joined.trim();
    if t.is_empty() || t == "null" {
        return;
    }
    match serde_json::from_str::<Value>(t) {
        Ok(Value::Object(_)) => {}
        Ok(v) => f.error(
            "create-options-json",
            &sp.key("createOptions"),
            format!("joins into {}, not a JSON object of Docker create options", json_kind(&v)),
        ),
        Err(e) => f.error(
            "create-options-json",
            &sp.key("createOptions"),
            format!("joins into text that is not JSON: {e}"),
        ),
    }
}

fn schema_version(
    f: &mut Findings,
    d: &Map<String, Value>,
    p: &JsonPath,
    who: &str,
    max: (u64, u64),
) -> (u64, u64) {
    let sp = p.key("schemaVersion");
    let Some(s) = d.get("schemaVersion") else {
        f.error_hint(
            "required",
            &sp,
            format!("{who} needs a schemaVersion"),
            format!("\"{}.{}\"", max.0, max.1),
        );
        return max;
    };
    let Some(text) = f.expect_string(s, &sp) else { return max };
    match version(text) {
        Some(v) if v.0 == 1 && v <= max => v,
        _ => {
            f.error_hint(
                "schema-version",
                &sp,
                format!("{who} does not accept schemaVersion \"{text}\""),
                format!(
                    "{who} takes 1.0 to {}.{}{}",
                    max.0,
                    max.1,
                    if who == "edgeAgent" { " (it answers 412 to anything newer)" } else { "" }
                ),
            );
            max
        }
    }
}

fn hub(f: &mut Findings, d: &Map<String, Value>, p: &JsonPath, modules: Option<&[String]>) {
    let ver = schema_version(f, d, p, "edgeHub", (1, 3));
    if let Some(r) = d.get("routes") {
        if let Some(routes) = f.expect_object(r, &p.key("routes")) {
            for (name, r) in routes {
                route(f, name, r, &p.key("routes").key(name), ver, modules);
            }
        }
    } else {
        f.error_hint(
            "required",
            &p.key("routes"),
            "edgeHub needs `routes` (it may be empty)",
            "\"routes\": {}",
        );
    }
    if let Some(s) = d.get("storeAndForwardConfiguration") {
        let sp = p.key("storeAndForwardConfiguration");
        if let Some(o) = f.expect_object(s, &sp)
            && !o
                .get("timeToLiveSecs")
                .is_some_and(|t| t.as_i64().is_some_and(|t| (0..=i64::from(i32::MAX)).contains(&t)))
        {
            f.error(
                "store-and-forward",
                &sp.key("timeToLiveSecs"),
                "needs timeToLiveSecs, a whole number of seconds (7200 is usual)",
            );
        }
    }
    if d.contains_key("mqttBroker") && ver < (1, 2) {
        f.error_hint(
            "schema-version",
            &p.key("mqttBroker"),
            "mqttBroker needs edgeHub schemaVersion 1.2",
            "set $edgeHub schemaVersion to \"1.2\"",
        );
    }
    if d.contains_key("integrity") && ver < (1, 3) {
        f.error_hint(
            "schema-version",
            &p.key("integrity"),
            "integrity needs edgeHub schemaVersion 1.3",
            "set $edgeHub schemaVersion to \"1.3\"",
        );
    }
}

fn route(
    f: &mut Findings,
    name: &str,
    r: &Value,
    p: &JsonPath,
    ver: (u64, u64),
    modules: Option<&[String]>,
) {
    if name.is_empty() || name.chars().any(|c| matches!(c, '.' | '$' | '#' | ' ')) {
        f.error(
            "route-name",
            p,
            format!("route name `{name}` may not be empty or hold `.`, `$`, `#` or spaces"),
        );
    }
    let (text, tp) = match r {
        Value::String(s) => (s.as_str(), p.clone()),
        Value::Object(o) => {
            if ver < (1, 1) {
                f.error_hint(
                    "schema-version",
                    p,
                    "a route object (priority, timeToLiveSecs) needs edgeHub schemaVersion 1.1",
                    "set $edgeHub schemaVersion to \"1.1\" or write the route as a string",
                );
            }
            f.unknown_keys(o, p, &["route", "priority", "timeToLiveSecs"], "a route");
            if let Some(pr) = o.get("priority")
                && pr.as_u64().is_none_or(|x| x > 9)
            {
                f.error(
                    "route-priority",
                    &p.key("priority"),
                    format!("priority {pr} is not 0 (highest) to 9"),
                );
            }
            if let Some(t) = o.get("timeToLiveSecs")
                && t.as_u64().is_none_or(|x| x > u64::from(u32::MAX))
            {
                f.error(
                    "route-ttl",
                    &p.key("timeToLiveSecs"),
                    format!("timeToLiveSecs {t} is not 0 to 4294967295"),
                );
            }
            match o.get("route").and_then(Value::as_str) {
                Some(s) => (s, p.key("route")),
                None => {
                    f.error(
                        "required",
                        &p.key("route"),
                        "a route object needs `route`, the route text",
                    );
                    return;
                }
            }
        }
        other => {
            f.error(
                "type",
                p,
                format!("a route is a string or an object, not {}", json_kind(other)),
            );
            return;
        }
    };
    match Route::parse(text) {
        Err(e) => f.error_hint(
            "route",
            &tp,
            format!("does not parse at position {}: {}", e.position, e.message),
            caret(text, e.position),
        ),
        Ok(route) => {
            for w in &route.warnings {
                f.warning(
                    "route",
                    &tp,
                    format!("position {}: {}", w.position, w.message),
                    caret(text, w.position),
                );
            }
            if let Some(mods) = modules {
                for (m, side) in [(route.source_module(), "source"), (route.sink_module(), "sink")]
                {
                    if let Some(m) = m
                        && !mods.iter().any(|x| x == m)
                    {
                        f.error_hint(
                            "route-module",
                            &tp,
                            format!(
                                "the {side} names module `{m}`, which the deployment does not have"
                            ),
                            format!(
                                "modules: {}",
                                if mods.is_empty() { "none".to_owned() } else { mods.join(", ") }
                            ),
                        );
                    }
                }
            }
        }
    }
}

/// The text with a caret under `position` (1-based), for hints.
pub fn caret(text: &str, position: usize) -> String {
    format!("{text}\n{}^", " ".repeat(position.saturating_sub(1)))
}

/// Module twins: desired properties under IoT Hub's twin rules.
fn module_twins(
    f: &mut Findings,
    mc: &Map<String, Value>,
    path: &JsonPath,
    modules: Option<&[String]>,
    layered: bool,
) {
    for (twin, content) in mc {
        if twin == "$edgeAgent" || twin == "$edgeHub" {
            continue;
        }
        let tp = path.key(twin);
        let Some(o) = f.expect_object(content, &tp) else { continue };
        if let Some(mods) = modules
            && !mods.iter().any(|m| m == twin)
        {
            f.warning(
                "module-twin",
                &tp,
                format!("sets the twin of `{twin}`, which is not a module of this deployment"),
                "the twin is written, but no module of this deployment reads it",
            );
        }
        for (k, v) in o {
            let ok = k == "properties.desired" || (layered && k.starts_with("properties.desired."));
            if !ok {
                f.error_hint(
                    "module-twin",
                    &tp.key(k),
                    format!("`{k}` is not a twin path a deployment may set"),
                    if layered {
                        "properties.desired or properties.desired.PATH"
                    } else {
                        "properties.desired"
                    },
                );
                continue;
            }
            if k == "properties.desired" {
                if let Some(d) = f.expect_object(v, &tp.key(k)) {
                    twin_rules(f, v, &tp.key(k), 1);
                    twin_size(f, d, &tp.key(k));
                }
            } else {
                twin_rules(f, v, &tp.key(k), 1);
            }
        }
    }
}

/// IoT Hub's twin rules (`iothub::limits`): keys, strings and depth.
fn twin_rules(f: &mut Findings, v: &Value, p: &JsonPath, depth: usize) {
    for e in crate::iothub::limits::violations(v, p, depth) {
        f.error(e.rule, &e.path, e.message);
    }
}

/// IoT Hub's size limit of a twin's desired properties, counted as IoT Hub counts it.
fn twin_size(f: &mut Findings, d: &Map<String, Value>, p: &JsonPath) {
    let n = crate::iothub::limits::size(d);
    if n > MAX_TWIN_BYTES {
        f.error_hint("twin-size", p, format!("is {n} bytes; a twin's desired properties hold at most 32 KB"), "move large settings out of the twin (a file the module downloads), or shorten createOptions");
    }
}

fn layered(f: &mut Findings, mc: &Map<String, Value>, path: &JsonPath) {
    let ap = path.key("$edgeAgent");
    match mc.get("$edgeAgent") {
        None => f.error_hint(
            "required",
            &ap,
            "a layered deployment needs $edgeAgent",
            "write \"$edgeAgent\": {} when the layer adds no module",
        ),
        Some(a) => {
            if let Some(a) = f.expect_object(a, &ap) {
                for (k, m) in a {
                    let kp = ap.key(k);
                    match k.strip_prefix("properties.desired.modules.") {
                        Some(name) if !name.contains('.') => {
                            module_name(f, name, &kp);
                            module(f, name, m, &kp, (1, 1), false);
                        }
                        _ => f.error_hint(
                            "layered-path",
                            &kp,
                            format!("`{k}` is not a path a layer may set on $edgeAgent"),
                            "a layer adds modules only, as \"properties.desired.modules.NAME\"; the runtime, system modules and schemaVersion belong to the base deployment",
                        ),
                    }
                }
            }
        }
    }
    if let Some(h) = mc.get("$edgeHub") {
        let hp = path.key("$edgeHub");
        if let Some(h) = f.expect_object(h, &hp) {
            for (k, r) in h {
                let kp = hp.key(k);
                match k.strip_prefix("properties.desired.routes.") {
                    Some(name) if !name.contains('.') => route(f, name, r, &kp, (1, 1), None),
                    _ => f.error_hint(
                        "layered-path",
                        &kp,
                        format!("`{k}` is not a path a layer may set on $edgeHub"),
                        "a layer adds routes only, as \"properties.desired.routes.NAME\"",
                    ),
                }
            }
        }
    }
    module_twins(f, mc, path, None, true);
}

#[cfg(test)]
mod tests;
