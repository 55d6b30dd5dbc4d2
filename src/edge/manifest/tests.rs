use super::*;
use serde_json::json;

const TEMPLATE: &str = include_str!("../../../testdata/edge/deployment.template.json");

fn vars(name: &str) -> Option<String> {
    match name {
        "CONTAINER_REGISTRY_USERNAME" => Some("contoso".into()),
        "CONTAINER_REGISTRY_PASSWORD" => Some("${FROM_KEYVAULT}".into()),
        "RELEASE" => Some("2026.11 \"winter\"".into()),
        _ => None,
    }
}

fn images() -> BTreeMap<String, String> {
    BTreeMap::from([("filter".to_owned(), "contoso.azurecr.io/filter:1.4.2-amd64".to_owned())])
}

fn built() -> Value {
    build(TEMPLATE, &vars, &images()).unwrap().0
}

#[test]
fn build_fills_placeholders_and_chunks_create_options_as_the_runtime_reads_them() {
    let doc = built();
    assert!(doc.get("$schema-template").is_none());
    let filter = &doc["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["filter"];
    assert_eq!(filter["settings"]["image"], "contoso.azurecr.io/filter:1.4.2-amd64");
    let s = filter["settings"].as_object().unwrap();
    let pieces: Vec<&str> =
        ["createOptions", "createOptions01"].iter().map(|k| s[*k].as_str().unwrap()).collect();
    assert!(!s.contains_key("createOptions02"), "two pieces: {s:?}");
    assert_eq!(pieces[0].chars().count(), CHUNK);
    assert!(pieces[1].chars().count() <= CHUNK);
    let joined: Value = serde_json::from_str(&pieces.concat()).unwrap();
    assert_eq!(joined["Labels"]["com.contoso.release"], "2026.11 \"winter\"", "escaped into JSON");
    assert_eq!(joined["HostConfig"]["Devices"][3]["PathOnHost"], "/dev/i2c-1");
    // Short ones stay one piece; an empty object is "{}".
    let sys = &doc["modulesContent"]["$edgeAgent"]["properties.desired"]["systemModules"];
    assert_eq!(sys["edgeAgent"]["settings"]["createOptions"], "{}");
    assert!(
        sys["edgeHub"]["settings"]["createOptions"]
            .as_str()
            .unwrap()
            .starts_with("{\"HostConfig\"")
    );
    // The same input gives the same bytes.
    assert_eq!(built().to_string(), doc.to_string());
    let f = validate(doc.to_string().as_bytes(), Kind::Base).unwrap();
    assert!(!f.has_errors(), "{f:?}");
}

#[test]
fn build_names_every_missing_variable_and_image() {
    let none = |_: &str| None;
    match build(TEMPLATE, &none, &images()) {
        Err(ManifestError::Unresolved(v)) => {
            assert_eq!(v, ["CONTAINER_REGISTRY_PASSWORD", "CONTAINER_REGISTRY_USERNAME", "RELEASE"])
        }
        other => panic!("{other:?}"),
    }
    match build(TEMPLATE, &vars, &BTreeMap::new()) {
        Err(ManifestError::NoImage(v)) => assert_eq!(v, ["filter"]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn create_options_longer_than_the_runtime_reads_are_refused() {
    let big = "x".repeat(CHUNK * MAX_CHUNKS + 1);
    let t = json!({"modulesContent": {"$edgeAgent": {"properties.desired": {"modules": {"m": {
        "settings": {"image": "a", "createOptions": {"Labels": {"k": big}}}}}}}}});
    let e = build(&t.to_string(), &vars, &images()).unwrap_err();
    assert!(e.to_string().contains("100 pieces"), "{e}");
    let t = json!({"modulesContent": {"$edgeAgent": {"properties.desired": {"modules": {"m": {
        "settings": {"image": "a", "createOptions": {"Labels": {"k": "y".repeat(CHUNK * 9)}}}}}}}}});
    let (doc, warnings) = build(&t.to_string(), &vars, &images()).unwrap();
    assert_eq!(warnings.iter().next().unwrap().rule, "create-options-size");
    let s = &doc["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["m"]["settings"];
    assert!(s.get("createOptions09").is_some() && s.get("createOptions10").is_none());
}

#[test]
fn images_are_checked_as_the_runtime_does() {
    for ok in [
        "a",
        "a:1",
        "r.io/a/b:1.0",
        "localhost:5000/a:1",
        "$upstream:443/azureiotedge-agent:1.5",
        "  a  ",
    ] {
        assert!(image_ok(ok), "{ok}");
    }
    for bad in ["", "  ", "a:", "a:b:c", "r.io/a/", "r.io/:1", "contoso/My Image:1", "r.io/Image:1"]
    {
        assert!(!image_ok(bad), "{bad}");
    }
}
