//! Which Edge deployments apply to which devices, as IoT Hub decides it (edge.md §3.3–3.5), and
//! what a proposed change would change (`otaforge edge what-if`).
//!
//! - A deployment targets an IoT Edge device (`capabilities.iotEdge = true`) whose twin its
//!   target condition is true for.
//! - Of the base deployments that target a device, one applies: the highest priority; on equal
//!   priority the most recently created; on equal creation time, the smaller id (IoT Hub does
//!   not say; otaforge's choice, so results are reproducible). The others are only targeted.
//! - A layered deployment applies when it targets the device, the device has a base
//!   deployment, and the layer's priority is higher than the base's; layers apply in priority
//!   order (then creation), so a higher one overrides a lower one's paths. A layer at or below
//!   its base, or without a base, is only targeted.
//! - A device no deployment applies to keeps its modules and is unmanaged.
//!
//! Evaluation is planned: an equality `path = literal` that every match of a condition needs
//! (in its top-level AND chain) indexes the deployment, so a twin is checked only against the
//! deployments its own values can satisfy, and bases are tried from the highest priority down
//! until one matches.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

use crate::iothub::condition::{ConditionError, Expr, Op, Target};
use crate::iothub::config::Configuration;
pub use crate::iothub::config::{Status, precedence};

/// One deployment, as far as targeting goes.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// Its id.
    pub id: String,
    /// Its target condition.
    pub target: Target,
    /// Its priority (higher wins).
    pub priority: i64,
    /// When it was created (RFC 3339; compared as text, which orders RFC 3339 UTC times).
    pub created: String,
    /// A layered deployment.
    pub layered: bool,
    /// Its `$edgeAgent` content is empty (`"$edgeAgent": {}`): a layer that adds no module,
    /// which IoT Hub shows as targeted even where it applies (edge.md §3.4).
    pub empty_agent: bool,
}

impl Deployment {
    /// A deployment from an IoT Hub configuration (`id`, `targetCondition`, `priority`,
    /// `createdTimeUtc`, `content.modulesContent`); layered when its `$edgeAgent` content
    /// uses dot paths instead of `properties.desired`.
    pub fn from_configuration(c: &Configuration) -> Result<Self, ConditionError> {
        let agent =
            c.modules_content().and_then(|m| m.get("$edgeAgent")).and_then(Value::as_object);
        Ok(Self {
            id: c.id.clone(),
            target: Target::parse(&c.target_condition)?,
            priority: c.priority,
            created: c.created_time_utc.clone().unwrap_or_default(),
            layered: agent.is_some_and(|a| !a.contains_key("properties.desired")),
            empty_agent: agent.is_some_and(serde_json::Map::is_empty),
        })
    }
}

/// What applies to one device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    /// The base deployment that applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// The layers that apply, lowest first.
    pub layers: Vec<String>,
}

impl Assignment {
    /// No deployment applies.
    pub fn unmanaged(&self) -> bool {
        self.base.is_none() && self.layers.is_empty()
    }
}

/// Whether a twin is an IoT Edge device's (`capabilities.iotEdge = true`): Edge deployments
/// target no other.
pub fn is_edge(twin: &Value) -> bool {
    twin.get("capabilities").and_then(|c| c.get("iotEdge")) == Some(&Value::Bool(true))
}

/// IoT Hub's status of each deployment for one twin, in the order given: the deployments that
/// target it (none unless it is an IoT Edge device), each `Applied` when `assignment` chose it
/// and it gives the agent something, else `Targeted`. `otaforge edge device show` and serve's
/// Edge pass both say what this says.
pub fn statuses<'a>(
    deployments: &'a [Deployment],
    assignment: &Assignment,
    twin: &Value,
) -> Vec<(&'a Deployment, Status)> {
    if !is_edge(twin) {
        return Vec::new();
    }
    deployments
        .iter()
        .filter(|d| d.target.matches(twin))
        .map(|d| {
            let chosen = assignment.base.as_deref() == Some(d.id.as_str())
                || assignment.layers.contains(&d.id);
            (d, if chosen && !d.empty_agent { Status::Applied } else { Status::Targeted })
        })
        .collect()
}

/// Deployments prepared for assigning many twins.
pub struct Plan<'a> {
    /// Bases, highest priority (then newest, then smallest id) first.
    bases: Vec<&'a Deployment>,
    /// Layers, lowest priority (then oldest) first.
    layers: Vec<&'a Deployment>,
    /// For each indexed path: literal (as JSON text) → indexes into `bases`/`layers` (tagged).
    index: Vec<PathIndex>,
    /// Deployments no equality indexes: always candidates.
    always: Vec<Slot>,
}

/// One indexed path, and the deployments by the literal their condition requires there.
type PathIndex = (Vec<String>, HashMap<String, Vec<Slot>>);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Slot {
    Base(usize),
    Layer(usize),
}

/// An equality every match of `e` needs, if its top-level AND chain has one.
fn required_equality(e: &Expr) -> Option<(&[String], &Value)> {
    match e {
        Expr::Binary(Op::Eq, a, b) => match (a.as_ref(), b.as_ref()) {
            (Expr::Path(p), Expr::Literal(v)) | (Expr::Literal(v), Expr::Path(p))
                if !matches!(v, Value::Object(_) | Value::Array(_)) =>
            {
                Some((p, v))
            }
            _ => None,
        },
        Expr::And(items) => items.iter().find_map(required_equality),
        _ => None,
    }
}

/// The key a primitive is indexed under (numbers by value, so 1 and 1.0 meet).
fn key(v: &Value) -> String {
    match v {
        Value::Number(n) => format!("n{}", n.as_f64().unwrap_or(f64::NAN)),
        other => other.to_string(),
    }
}

fn lookup<'v>(twin: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(twin, |at, s| crate::iothub::condition::field(at, s))
}

impl<'a> Plan<'a> {
    /// Prepares the deployments.
    pub fn new(deployments: &'a [Deployment]) -> Self {
        let mut bases: Vec<&Deployment> = deployments.iter().filter(|d| !d.layered).collect();
        bases.sort_by(|a, b| {
            precedence((a.priority, &a.created, &a.id), (b.priority, &b.created, &b.id))
        });
        let mut layers: Vec<&Deployment> = deployments.iter().filter(|d| d.layered).collect();
        layers.sort_by(|a, b| {
            a.priority
                .cmp(&b.priority)
                .then_with(|| a.created.cmp(&b.created))
                .then_with(|| a.id.cmp(&b.id))
        });
        let mut index: Vec<PathIndex> = Vec::new();
        let mut always = Vec::new();
        let slots = bases
            .iter()
            .enumerate()
            .map(|(i, d)| (Slot::Base(i), *d))
            .chain(layers.iter().enumerate().map(|(i, d)| (Slot::Layer(i), *d)));
        for (slot, d) in slots {
            let eq = match &d.target {
                Target::Where(e) => required_equality(e),
                Target::All => None,
                // Targets nothing: never a candidate.
                Target::Nothing => continue,
            };
            match eq {
                Some((path, v)) => {
                    let at = match index.iter().position(|(p, _)| p.as_slice() == path) {
                        Some(i) => i,
                        None => {
                            index.push((path.to_vec(), HashMap::new()));
                            index.len() - 1
                        }
                    };
                    index[at].1.entry(key(v)).or_default().push(slot);
                }
                None => always.push(slot),
            }
        }
        Self { bases, layers, index, always }
    }

    /// What applies to one twin.
    pub fn assign(&self, twin: &Value) -> Assignment {
        if twin.get("capabilities").and_then(|c| c.get("iotEdge")) != Some(&Value::Bool(true)) {
            return Assignment::default();
        }
        let mut candidates: Vec<Slot> = self.always.clone();
        for (path, by_value) in &self.index {
            if let Some(v) = lookup(twin, path)
                && let Some(slots) = by_value.get(&key(v))
            {
                candidates.extend_from_slice(slots);
            }
        }
        // Bases sort before layers, each in its order: the first matching base wins.
        candidates.sort_unstable();
        let mut base: Option<&Deployment> = None;
        let mut layers = Vec::new();
        for slot in candidates {
            match slot {
                Slot::Base(i) if base.is_none() => {
                    if self.bases[i].target.matches(twin) {
                        base = Some(self.bases[i]);
                    }
                }
                Slot::Base(_) => {}
                Slot::Layer(i) => {
                    let l = self.layers[i];
                    if let Some(b) = base
                        && l.priority > b.priority
                        && l.target.matches(twin)
                    {
                        layers.push(l.id.clone());
                    }
                }
            }
        }
        Assignment { base: base.map(|b| b.id.clone()), layers }
    }
}

/// The desired properties a device's module twins get from its base and layers (edge.md §3.4):
/// the base sets each twin's whole `properties.desired`; each layer, lowest priority first,
/// sets the dot paths it names (`properties.desired.modules.NAME`, `….routes.NAME`, a module
/// twin's `properties.desired.PATH`), replacing what is there, or a module twin's whole
/// `properties.desired`. `contents` are `modulesContent` documents, base first.
pub fn merged(contents: &[&Value]) -> serde_json::Map<String, Value> {
    let mut twins = serde_json::Map::new();
    for content in contents {
        for (twin, paths) in content.as_object().into_iter().flatten() {
            let desired =
                twins.entry(twin.clone()).or_insert_with(|| Value::Object(Default::default()));
            for (path, value) in paths.as_object().into_iter().flatten() {
                let Some(rest) = path.strip_prefix("properties.desired") else { continue };
                if rest.is_empty() {
                    *desired = value.clone();
                    continue;
                }
                let Some(rest) = rest.strip_prefix('.') else { continue };
                let mut at = &mut *desired;
                let segs: Vec<&str> = rest.split('.').collect();
                for (i, seg) in segs.iter().enumerate() {
                    if !at.is_object() {
                        *at = Value::Object(Default::default());
                    }
                    let Value::Object(m) = at else { break };
                    if i + 1 == segs.len() {
                        m.insert((*seg).to_owned(), value.clone());
                        break;
                    }
                    at = m
                        .entry((*seg).to_owned())
                        .or_insert_with(|| Value::Object(Default::default()));
                }
            }
        }
    }
    twins
}

/// A proposed change to the deployments.
#[derive(Debug, Clone)]
pub enum Change {
    /// A new deployment.
    Create(Deployment),
    /// New target condition and/or priority of an existing one (content is immutable).
    Update {
        /// The deployment.
        id: String,
        /// Its new target condition.
        target: Option<Target>,
        /// Its new priority.
        priority: Option<i64>,
    },
    /// Deleting one.
    Delete(String),
}

/// One device whose deployments would change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Difference {
    /// The device.
    pub device_id: String,
    /// What applies now.
    pub before: Assignment,
    /// What would apply.
    pub after: Assignment,
    /// Managed now, unmanaged after (it keeps its modules as they are).
    pub left_unmanaged: bool,
}

/// The deployments after `change`; an error names an unknown deployment or a taken id.
pub fn apply_change(
    deployments: &[Deployment],
    change: &Change,
) -> Result<Vec<Deployment>, String> {
    let mut after = deployments.to_vec();
    match change {
        Change::Create(d) => {
            if after.iter().any(|x| x.id == d.id) {
                return Err(format!("deployment `{}` exists; update or delete it", d.id));
            }
            after.push(d.clone());
        }
        Change::Update { id, target, priority } => {
            let d = after
                .iter_mut()
                .find(|x| &x.id == id)
                .ok_or_else(|| format!("no deployment `{id}`"))?;
            if let Some(t) = target {
                d.target = t.clone();
            }
            if let Some(p) = priority {
                d.priority = *p;
            }
        }
        Change::Delete(id) => {
            let before = after.len();
            after.retain(|x| &x.id != id);
            if after.len() == before {
                return Err(format!("no deployment `{id}`"));
            }
        }
    }
    Ok(after)
}

/// Every device whose base deployment or layer set would change, in twin order. Both
/// assignments run on all cores.
pub fn what_if(
    twins: &[Value],
    deployments: &[Deployment],
    change: &Change,
) -> Result<Vec<Difference>, String> {
    let after = apply_change(deployments, change)?;
    let (p0, p1) = (Plan::new(deployments), Plan::new(&after));
    let threads = std::thread::available_parallelism().map_or(1, usize::from).max(1);
    let chunk = twins.len().div_ceil(threads).max(1);
    let parts: Vec<Vec<Difference>> = std::thread::scope(|s| {
        let handles: Vec<_> = twins
            .chunks(chunk)
            .map(|part| {
                let (p0, p1) = (&p0, &p1);
                s.spawn(move || {
                    part.iter()
                        .filter_map(|t| {
                            let (before, after) = (p0.assign(t), p1.assign(t));
                            (before != after).then(|| Difference {
                                device_id: t["deviceId"].as_str().unwrap_or_default().to_owned(),
                                left_unmanaged: !before.unmanaged() && after.unmanaged(),
                                before,
                                after,
                            })
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    Ok(parts.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(id: &str, cond: &str, priority: i64, created: &str, layered: bool) -> Deployment {
        Deployment {
            id: id.into(),
            target: Target::parse(cond).unwrap(),
            priority,
            created: created.into(),
            layered,
            empty_agent: false,
        }
    }

    fn twin(id: &str, env: &str, edge: bool) -> Value {
        json!({"deviceId": id, "tags": {"environment": env, "site": "a"}, "capabilities": {"iotEdge": edge}})
    }

    #[test]
    fn priority_then_newest_wins_and_layers_apply_only_above_their_base() {
        let all = vec![
            d("base-old", "tags.environment = 'prod'", 10, "2026-01-01T00:00:00Z", false),
            d("base-new", "tags.environment = 'prod'", 10, "2026-02-01T00:00:00Z", false),
            d("base-low", "*", 1, "2026-03-01T00:00:00Z", false),
            d("layer-hi", "tags.site = 'a'", 20, "2026-01-01T00:00:00Z", true),
            d("layer-below", "tags.site = 'a'", 5, "2026-01-01T00:00:00Z", true),
            d(
                "layer-top",
                "tags.site = 'a' AND tags.environment = 'prod'",
                30,
                "2026-01-01T00:00:00Z",
                true,
            ),
        ];
        let plan = Plan::new(&all);
        let prod = plan.assign(&twin("p", "prod", true));
        assert_eq!(prod.base.as_deref(), Some("base-new"), "equal priority: the newest");
        assert_eq!(prod.layers, ["layer-hi", "layer-top"], "layer-below is at or below its base");
        let test = plan.assign(&twin("t", "test", true));
        assert_eq!(test.base.as_deref(), Some("base-low"));
        assert_eq!(test.layers, ["layer-below", "layer-hi"], "above base-low (1)");
        assert!(plan.assign(&twin("x", "prod", false)).unmanaged(), "not an Edge device");
    }

    #[test]
    fn what_if_lists_fallbacks_and_devices_left_unmanaged() {
        let all = vec![
            d("prod", "tags.environment = 'prod'", 10, "2026-01-01T00:00:00Z", false),
            d("fallback", "tags.environment IN ['prod', 'test']", 1, "2026-01-01T00:00:00Z", false),
        ];
        let twins =
            vec![twin("p1", "prod", true), twin("t1", "test", true), twin("d1", "dev", true)];
        // Deleting `prod`: p1 falls back; t1 unchanged; d1 was never managed.
        let diff = what_if(&twins, &all, &Change::Delete("prod".into())).unwrap();
        assert_eq!(diff.len(), 1);
        assert_eq!(
            (diff[0].device_id.as_str(), diff[0].after.base.as_deref()),
            ("p1", Some("fallback"))
        );
        assert!(!diff[0].left_unmanaged);
        // Retargeting `fallback` away from test: t1 is left unmanaged.
        let change = Change::Update {
            id: "fallback".into(),
            target: Some(Target::parse("tags.environment = 'prod'").unwrap()),
            priority: None,
        };
        let diff = what_if(&twins, &all, &change).unwrap();
        assert_eq!(diff.len(), 1);
        assert!(diff[0].left_unmanaged && diff[0].device_id == "t1");
        // A new higher base for dev and prod.
        let change = Change::Create(d("all", "*", 50, "2026-05-01T00:00:00Z", false));
        let diff = what_if(&twins, &all, &change).unwrap();
        assert_eq!(
            diff.iter().map(|x| x.device_id.as_str()).collect::<Vec<_>>(),
            ["p1", "t1", "d1"]
        );
        assert!(what_if(&twins, &all, &Change::Delete("nope".into())).is_err());
    }

    #[test]
    fn layers_merge_by_path_over_the_base() {
        let base = json!({
            "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "modules": {"a": {"v": 1}}}},
            "$edgeHub": {"properties.desired": {"routes": {"r1": "FROM /* INTO $upstream"}}},
            "a": {"properties.desired": {"x": 1, "y": 2}},
        });
        let low = json!({
            "$edgeAgent": {"properties.desired.modules.b": {"v": 1}},
            "$edgeHub": {"properties.desired.routes.r2": "FROM /messages/* INTO $upstream"},
            "a": {"properties.desired.extra": {"k": 1}},
        });
        let high = json!({
            "$edgeAgent": {"properties.desired.modules.b": {"v": 2}},
            "a": {"properties.desired.extra.k": 5},
        });
        let m = merged(&[&base, &low, &high]);
        assert_eq!(
            m["$edgeAgent"]["modules"],
            json!({"a": {"v": 1}, "b": {"v": 2}}),
            "the higher layer wins"
        );
        assert_eq!(m["$edgeAgent"]["schemaVersion"], "1.1");
        assert_eq!(m["$edgeHub"]["routes"].as_object().unwrap().len(), 2);
        assert_eq!(
            m["a"],
            json!({"x": 1, "y": 2, "extra": {"k": 5}}),
            "a union, not a replacement"
        );
    }

    #[test]
    fn the_index_never_changes_the_answer() {
        // Conditions with and without an indexable equality, checked against a brute force.
        let all = vec![
            d("a", "tags.environment = 'prod' AND tags.ring > 1", 5, "2026-01-01T00:00:00Z", false),
            d("b", "tags.ring = 2 OR tags.environment = 'test'", 6, "2026-01-01T00:00:00Z", false),
            d("c", "tags.ring = 2.0", 7, "2026-01-01T00:00:00Z", false),
            d("e", "'dev' = tags.environment", 4, "2026-01-01T00:00:00Z", false),
            d("l", "tags.ring = 3", 9, "2026-01-01T00:00:00Z", true),
            d("n", "", 100, "2026-01-01T00:00:00Z", false),
        ];
        let plan = Plan::new(&all);
        for (i, env) in ["prod", "test", "dev", "x"].iter().enumerate() {
            for ring in 0..5 {
                let t = json!({"deviceId": format!("d{i}{ring}"), "tags": {"environment": env, "ring": ring}, "capabilities": {"iotEdge": true}});
                let base =
                    all.iter().filter(|x| !x.layered && x.target.matches(&t)).max_by(|a, b| {
                        a.priority
                            .cmp(&b.priority)
                            .then_with(|| a.created.cmp(&b.created))
                            .then_with(|| b.id.cmp(&a.id))
                    });
                let got = plan.assign(&t);
                assert_eq!(got.base.as_deref(), base.map(|x| x.id.as_str()), "{t}");
                let layer = base.is_some_and(|b| ring == 3 && 9 > b.priority);
                assert_eq!(got.layers == ["l"], layer, "{t}");
            }
        }
    }
}
