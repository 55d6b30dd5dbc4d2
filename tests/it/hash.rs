//! `otaforge hash` against `sha256sum`, and its JSON contract.

use std::process::Command;

use crate::{otaforge, stdout_json};

fn write(dir: &std::path::Path, name: &str, size: usize) -> std::path::PathBuf {
    let data: Vec<u8> = (0..size).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let p = dir.join(name);
    fs_err::write(&p, data).unwrap();
    p
}

#[test]
fn digests_match_sha256sum_in_input_order() {
    let dir = tempfile::tempdir().unwrap();
    let files = [
        write(dir.path(), "empty", 0),
        write(dir.path(), "one", 1),
        write(dir.path(), "buffer-plus-one", 256 * 1024 + 1),
        write(dir.path(), "three-mb", 3_000_017),
    ];
    let out =
        otaforge().args(["hash", "--format", "json", "--jobs", "2"]).args(&files).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = stdout_json(&out);
    let entries = v.as_array().unwrap();
    assert_eq!(entries.len(), files.len());
    for (entry, file) in entries.iter().zip(&files) {
        let keys: Vec<&String> = entry.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["file", "sizeInBytes", "sha256", "sha256Hex"]);
        assert_eq!(entry["file"], file.display().to_string());
        assert_eq!(entry["sizeInBytes"], fs_err::metadata(file).unwrap().len());
        let sum = Command::new("sha256sum").arg(file).output().expect("sha256sum is installed");
        let hex =
            String::from_utf8(sum.stdout).unwrap().split_whitespace().next().unwrap().to_owned();
        assert_eq!(entry["sha256Hex"], hex);
        let b64: otaforge::Sha256 = entry["sha256"].as_str().unwrap().parse().unwrap();
        assert_eq!(b64.to_hex(), hex);
    }
}

#[test]
fn text_output_has_one_line_per_file() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a", 10);
    let out = otaforge().arg("hash").arg(&a).output().unwrap();
    let line = String::from_utf8(out.stdout).unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields.len(), 4, "{line}");
    assert_eq!(fields[2], "10");
    assert!(fields[3].ends_with("/a"));
}

#[test]
fn missing_files_are_errors_of_their_own_and_the_rest_is_hashed() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a", 10);
    let out = otaforge()
        .arg("hash")
        .arg("/nonexistent/firmware.bin")
        .arg(&a)
        .arg("/nonexistent/other.bin")
        .assert()
        .code(1);
    let o = out.get_output();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        err.contains("/nonexistent/firmware.bin") && err.contains("/nonexistent/other.bin"),
        "{err}"
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains(" 10 "), "{text}");
    // JSON: the failure object, with what could be hashed in details.
    let out = otaforge()
        .args(["--format", "json", "hash", "/nonexistent/firmware.bin"])
        .arg(&a)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let json = crate::stdout_json(&out);
    assert_eq!(
        (json["error"].as_str(), json["file"].as_str()),
        (Some("unreadable"), Some("/nonexistent/firmware.bin"))
    );
    assert_eq!(json["details"][0]["sizeInBytes"], 10);
}

#[test]
fn dash_reads_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a", 1000);
    let bytes = fs_err::read(&a).unwrap();
    let out = otaforge()
        .args(["--format", "json", "hash", "-"])
        .arg(&a)
        .write_stdin(bytes)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let json = crate::stdout_json(&out);
    assert_eq!(json[0]["file"], "-");
    assert_eq!(json[0]["sha256"], json[1]["sha256"]);
    assert_eq!(json[0]["sizeInBytes"], 1000);
}
