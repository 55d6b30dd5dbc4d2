//! Keys, detached JWS, release metadata, signed deltas and MCUboot images: round trips, every
//! refusal with its own error, and interop with openssl, jwcrypto and imgtool.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use otaforge::sign::meta::{self, Policy};
use otaforge::sign::{KeySigner, PrivateKey, SignError, Signer, TrustedKeys, jws};
use proptest::prelude::*;

use crate::{otaforge, stdout_json};

const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Fails (never skips) when an interop tool is missing.
fn require_python(module: &str, pip: &str) {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "python3 module {module} is required: python3 -m pip install {pip} (.ci/run installs it)"
    );
}

fn require_tool(tool: &str) {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok, "{tool} is required for interop tests (.ci/run installs it)");
}

/// Runs otaforge with `--format json`; returns exit code and stdout as JSON.
fn run_json(dir: &Path, args: &[&str]) -> (i32, serde_json::Value) {
    let out = otaforge().current_dir(dir).arg("--format").arg("json").args(args).output().unwrap();
    let code = out.status.code().unwrap_or(-1);
    let json = if out.stdout.is_empty() {
        serde_json::json!({"stderr": String::from_utf8_lossy(&out.stderr)})
    } else {
        stdout_json(&out)
    };
    (code, json)
}

fn keygen(dir: &Path, name: &str) {
    otaforge().current_dir(dir).args(["key", "generate", "-o", name]).assert().success();
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs_err::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ---- keys ------------------------------------------------------------------------------------

#[test]
#[ignore = "needs openssl"]
fn key_generate_writes_0600_never_overwrites_and_openssl_reads_it() {
    use std::os::unix::fs::PermissionsExt as _;
    require_tool("openssl");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (code, json) = run_json(d, &["key", "generate", "-o", "release"]);
    assert_eq!(code, 0, "{json}");
    let mode = |p: &str| fs_err::metadata(d.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("release.pem"), 0o600);
    assert_eq!(mode("release.pub.pem"), 0o644);
    let kid = json["keyId"].as_str().unwrap().to_owned();

    // Never overwrites, and leaves both files exactly as they were.
    let before = fs_err::read(d.join("release.pem")).unwrap();
    let out =
        otaforge().current_dir(d).args(["key", "generate", "-o", "release"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(fs_err::read(d.join("release.pem")).unwrap(), before);
    // Also when only the public half exists.
    fs_err::write(d.join("other.pub.pem"), "x").unwrap();
    let out = otaforge().current_dir(d).args(["key", "generate", "-o", "other"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(!d.join("other.pem").exists());
    assert_eq!(files_in(d), ["other.pub.pem", "release.pem", "release.pub.pem"]);

    // openssl reads both halves, and its DER hash is our key id.
    let st = Command::new("openssl")
        .args(["pkey", "-noout", "-in"])
        .arg(d.join("release.pem"))
        .status()
        .unwrap();
    assert!(st.success());
    let der = Command::new("openssl")
        .args(["pkey", "-pubin", "-outform", "DER", "-in"])
        .arg(d.join("release.pub.pem"))
        .output()
        .unwrap();
    assert!(der.status.success());
    assert_eq!(otaforge::Sha256::digest(&der.stdout).to_hex(), kid);
    // openssl derives the same public key from our private key.
    let derived = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(d.join("release.pem"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&derived.stdout),
        fs_err::read_to_string(d.join("release.pub.pem")).unwrap()
    );

    // And we read keys openssl made, private or public.
    let st = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(d.join("ossl.pem"))
        .status()
        .unwrap();
    assert!(st.success());
    let (code, a) = run_json(d, &["key", "show", "ossl.pem"]);
    assert_eq!(code, 0);
    let pubout = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(d.join("ossl.pem"))
        .output()
        .unwrap();
    assert_eq!(a["publicKeyPem"].as_str().unwrap(), String::from_utf8_lossy(&pubout.stdout));
}

#[test]
fn bad_key_files_are_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs_err::write(
        d.join("junk.pem"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    fs_err::write(d.join("f"), "x").unwrap();
    let out = otaforge().current_dir(d).args(["sign", "f", "--key", "junk.pem"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("junk.pem") && err.contains("PKCS#8"), "{err}");
    assert!(!d.join("f.sig").exists());
    // No key at all.
    let out = otaforge()
        .current_dir(d)
        .env_remove("OTAFORGE_SIGNING_KEY")
        .args(["sign", "f"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no signing key"));
}

// ---- detached JWS ----------------------------------------------------------------------------

struct Signed {
    dir: tempfile::TempDir,
    file: PathBuf,
    sig: PathBuf,
}

fn signed_file() -> Signed {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path(), "k");
    keygen(dir.path(), "other");
    let file = dir.path().join("fw.bin");
    let data: Vec<u8> =
        (0..150_001u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    fs_err::write(&file, data).unwrap();
    otaforge()
        .current_dir(dir.path())
        .args(["sign", "fw.bin", "--key", "k.pem"])
        .assert()
        .success();
    let sig = dir.path().join("fw.bin.sig");
    Signed { dir, file, sig }
}

fn verify_kind(s: &Signed, args: &[&str]) -> (i32, String) {
    let mut all = vec!["verify", "fw.bin"];
    all.extend_from_slice(args);
    let (code, json) = run_json(s.dir.path(), &all);
    let kind = json["error"].as_str().unwrap_or("none").to_owned();
    (code, kind)
}

#[test]
fn detached_signature_verifies_and_every_tamper_has_its_own_error() {
    let s = signed_file();
    let (code, json) = run_json(s.dir.path(), &["verify", "fw.bin", "--pub", "k.pub.pem"]);
    assert_eq!((code, json[0]["valid"].as_bool()), (0, Some(true)), "{json}");
    assert_eq!(verify_kind(&s, &["--trusted-keys", "."]).0, 0);

    let good = fs_err::read(&s.file).unwrap();
    for at in [0, 1, 4096, good.len() / 2, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        fs_err::write(&s.file, &bad).unwrap();
        assert_eq!(
            verify_kind(&s, &["--pub", "k.pub.pem"]),
            (1, "badSignature".into()),
            "payload flip at {at}"
        );
    }
    fs_err::write(&s.file, &good).unwrap();

    let jws_text = fs_err::read_to_string(&s.sig).unwrap();
    let parts: Vec<&str> = jws_text.trim().split('.').collect();
    let header: serde_json::Value =
        serde_json::from_slice(&B64URL.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "EdDSA");
    let write_sig = |h: &serde_json::Value, sig: &[u8]| {
        let t = format!("{}..{}", B64URL.encode(h.to_string()), B64URL.encode(sig));
        fs_err::write(&s.sig, t).unwrap();
    };
    let sig = B64URL.decode(parts[2]).unwrap();
    for at in [0, 31, 32, 63] {
        let mut bad = sig.clone();
        bad[at] ^= 0x04;
        write_sig(&header, &bad);
        assert_eq!(
            verify_kind(&s, &["--pub", "k.pub.pem"]),
            (1, "badSignature".into()),
            "sig flip at {at}"
        );
    }
    let mut h = header.clone();
    let mut kid = h["kid"].as_str().unwrap().to_owned();
    kid.replace_range(0..1, if kid.starts_with('0') { "1" } else { "0" });
    h["kid"] = kid.into();
    write_sig(&h, &sig);
    assert_eq!(verify_kind(&s, &["--pub", "k.pub.pem"]), (1, "unknownKey".into()));
    let mut h = header.clone();
    h["alg"] = "HS256".into();
    write_sig(&h, &sig);
    assert_eq!(verify_kind(&s, &["--pub", "k.pub.pem"]), (1, "malformed".into()));
    let mut h = header.clone();
    h["crit"] = serde_json::json!(["exp"]);
    write_sig(&h, &sig);
    assert_eq!(verify_kind(&s, &["--pub", "k.pub.pem"]), (1, "malformed".into()));
    // An embedded payload is refused: signatures are detached.
    fs_err::write(&s.sig, format!("{}.{}.{}", parts[0], B64URL.encode(&good), parts[2])).unwrap();
    assert_eq!(verify_kind(&s, &["--pub", "k.pub.pem"]), (1, "malformed".into()));

    write_sig(&header, &sig);
    assert_eq!(verify_kind(&s, &["--pub", "other.pub.pem"]), (1, "unknownKey".into()));
    assert_eq!(verify_kind(&s, &[]), (1, "noKeyConfigured".into()));
    fs_err::remove_file(&s.sig).unwrap();
    assert_eq!(verify_kind(&s, &["--pub", "k.pub.pem"]), (1, "signatureMissing".into()));
}

#[test]
#[ignore = "needs PyPI jwcrypto"]
fn jwcrypto_verifies_our_signatures_and_we_verify_its() {
    require_python("jwcrypto", "jwcrypto==1.6.1");
    let s = signed_file();
    let d = s.dir.path();
    let script = r#"
import sys
from jwcrypto import jwk, jws
pub = jwk.JWK.from_pem(open('k.pub.pem', 'rb').read())
payload = open('fw.bin', 'rb').read()
t = jws.JWS()
t.deserialize(open('fw.bin.sig').read().strip())
t.verify(pub, detached_payload=payload)
assert t.jose_header['alg'] == 'EdDSA'
# A detached signature made by jwcrypto with our key and key id, for us to verify.
priv = jwk.JWK.from_pem(open('k.pem', 'rb').read())
kid = t.jose_header['kid']
s = jws.JWS(payload)
s.add_signature(priv, None, {'alg': 'EdDSA', 'kid': kid})
s.detach_payload()
open('theirs.bin.sig', 'w').write(s.serialize(compact=True))
open('theirs.bin', 'wb').write(payload)
# And a tampered payload must fail in jwcrypto too.
try:
    t.verify(pub, detached_payload=payload + b'x')
    sys.exit('jwcrypto accepted a tampered payload')
except jws.InvalidJWSSignature:
    pass
print('ok')
"#;
    let out = Command::new("python3").arg("-c").arg(script).current_dir(d).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (code, json) = run_json(d, &["verify", "theirs.bin", "--pub", "k.pub.pem"]);
    assert_eq!(code, 0, "{json}");
}

#[test]
#[ignore = "needs openssl"]
fn key_sources_env_and_external_command_sign_the_same_way() {
    require_tool("openssl");
    let s = signed_file();
    let d = s.dir.path();
    let from_file = fs_err::read_to_string(&s.sig).unwrap();
    let pem = fs_err::read_to_string(d.join("k.pem")).unwrap();
    // Ed25519 is deterministic: every source must produce the same signature.
    otaforge()
        .current_dir(d)
        .env("OTAFORGE_SIGNING_KEY", &pem)
        .args(["sign", "fw.bin"])
        .assert()
        .success();
    assert_eq!(fs_err::read_to_string(&s.sig).unwrap(), from_file);
    otaforge()
        .current_dir(d)
        .env("MY_KEY", &pem)
        .args(["sign", "fw.bin", "--key", "env:MY_KEY"])
        .assert()
        .success();
    assert_eq!(fs_err::read_to_string(&s.sig).unwrap(), from_file);
    // An external signer: openssl signs what it reads on stdin, the key never reaches otaforge.
    // (pkeyutl needs a sized file for -rawin, so the message is spooled to a temp file first.)
    let cmd = format!(
        "f=$(mktemp) && cat > \"$f\" && openssl pkeyutl -sign -rawin -inkey {} -in \"$f\"; r=$?; rm -f \"$f\"; exit $r",
        d.join("k.pem").display()
    );
    fs_err::remove_file(&s.sig).unwrap();
    otaforge()
        .current_dir(d)
        .args(["sign", "fw.bin", "--sign-command", &cmd, "--signer-pub", "k.pub.pem"])
        .assert()
        .success();
    assert_eq!(fs_err::read_to_string(&s.sig).unwrap(), from_file);
    // A signer holding another key is caught before anything is written.
    fs_err::remove_file(&s.sig).unwrap();
    let out = otaforge()
        .current_dir(d)
        .args(["sign", "fw.bin", "--sign-command", &cmd, "--signer-pub", "other.pub.pem"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not verify with public key"));
    let out = otaforge()
        .current_dir(d)
        .args(["sign", "fw.bin", "--sign-command", "exit 3", "--signer-pub", "k.pub.pem"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exited with"));
    assert!(!s.sig.exists());
}

/// `verify --pub` given the private key file is refused as a usage error: a private key must
/// not travel to where verification happens.
const VERIFY_WITH_PRIVATE: i32 = 2;

#[test]
fn private_key_material_never_appears_in_any_output() {
    let s = signed_file();
    let d = s.dir.path();
    let pem = fs_err::read_to_string(d.join("k.pem")).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(&body).unwrap();
    let seed = &der[der.len() - 32..];
    let secrets = [
        body.clone(),
        base64::engine::general_purpose::STANDARD.encode(seed),
        B64URL.encode(seed),
        seed.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    ];
    fs_err::write(d.join("bad.pem"), pem.replace("MC4CAQAw", "MC4CAQEw")).unwrap();
    // Each run with the exit code it must give: a run that fails for an unrelated reason
    // would prove nothing about what a successful one prints.
    let runs: Vec<(i32, Vec<&str>)> = vec![
        (0, vec!["key", "show", "k.pem"]),
        (0, vec!["sign", "fw.bin", "--key", "k.pem"]),
        (2, vec!["sign", "fw.bin", "--key", "bad.pem"]),
        (0, vec!["sign", "fw.bin", "--key", "env:SECRET"]),
        (VERIFY_WITH_PRIVATE, vec!["verify", "fw.bin", "--pub", "k.pem"]),
        (
            0,
            vec![
                "meta",
                "sign",
                "fw.bin",
                "--release-version",
                "1.0",
                "--security-counter",
                "1",
                "--key",
                "k.pem",
                "-o",
                "m.json",
            ],
        ),
    ];
    for (code, args) in runs {
        for format in ["text", "json"] {
            let out = otaforge()
                .current_dir(d)
                .env("SECRET", &pem)
                .args(["--format", format])
                .args(&args)
                .output()
                .unwrap();
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(out.status.code(), Some(code), "{args:?} --format {format}: {all}");
            for s in &secrets {
                assert!(!all.contains(s.as_str()), "{args:?} printed key material");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn jws_round_trips_and_refuses_any_change(
        seed in any::<[u8; 32]>(),
        payload in proptest::collection::vec(any::<u8>(), 0..5000),
        flip in any::<usize>(),
    ) {
        let signer = KeySigner::new(PrivateKey::from_seed(&seed));
        let mut keys = TrustedKeys::new();
        keys.add(signer.public_key().clone());
        let jws_text = jws::sign_detached(&payload, &signer).unwrap();
        prop_assert_eq!(jws::verify_detached(&jws_text, &payload, &keys, "p").unwrap(), signer.public_key().id());
        if !payload.is_empty() {
            let mut bad = payload.clone();
            bad[flip % payload.len()] ^= 0x80;
            let refused = matches!(jws::verify_detached(&jws_text, &bad, &keys, "p"), Err(SignError::BadSignature { .. }));
            prop_assert!(refused);
        }
    }
}

// ---- release metadata --------------------------------------------------------------------------

fn release_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    keygen(d, "a");
    keygen(d, "b");
    fs_err::write(d.join("app.bin"), vec![1u8; 5000]).unwrap();
    fs_err::write(d.join("rootfs.delta"), vec![2u8; 700]).unwrap();
    let (code, json) = run_json(
        d,
        &[
            "meta",
            "sign",
            "app.bin",
            "rootfs.delta",
            "--release-version",
            "2.4.1",
            "--security-counter",
            "7",
            "--expires",
            "30d",
            "--key",
            "a.pem",
            "--key",
            "b.pem",
            "-o",
            "release.json",
        ],
    );
    assert_eq!(code, 0, "{json}");
    dir
}

fn meta_kind(d: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["meta", "verify", "release.json"];
    args.extend_from_slice(extra);
    let (code, json) = run_json(d, &args);
    (code, json["error"].as_str().unwrap_or(if code == 0 { "ok" } else { "?" }).to_owned())
}

#[test]
fn release_metadata_refusals_are_distinct() {
    let dir = release_dir();
    let d = dir.path();
    let ok = |extra: &[&str]| meta_kind(d, extra);
    assert_eq!(ok(&["--pub", "a.pub.pem"]), (0, "ok".into()));
    assert_eq!(
        ok(&["--pub", "a.pub.pem", "--pub", "b.pub.pem", "--threshold", "2"]),
        (0, "ok".into())
    );
    assert_eq!(ok(&["--pub", "a.pub.pem", "--threshold", "2"]).1, "signatureMissing");
    assert_eq!(ok(&[]).1, "noKeyConfigured");
    keygen(d, "c");
    assert_eq!(ok(&["--pub", "c.pub.pem"]).1, "unknownKey");
    // Expiry against an injected clock, and the early warning.
    assert_eq!(ok(&["--pub", "a.pub.pem", "--at", "2999-01-01T00:00:00Z"]).1, "expired");
    assert_eq!(ok(&["--pub", "a.pub.pem", "--warn-expiring", "31"]), (1, "expiringSoon".into()));
    assert_eq!(ok(&["--pub", "a.pub.pem", "--warn-expiring", "29"]), (0, "ok".into()));
    // Rollback floors.
    assert_eq!(ok(&["--pub", "a.pub.pem", "--min-version", "2.4.2"]).1, "versionRollback");
    assert_eq!(ok(&["--pub", "a.pub.pem", "--min-version", "2.4.1"]), (0, "ok".into()));
    assert_eq!(ok(&["--pub", "a.pub.pem", "--min-security-counter", "8"]).1, "counterRollback");
    assert_eq!(ok(&["--pub", "a.pub.pem", "--min-security-counter", "7"]), (0, "ok".into()));
    // Artifacts.
    fs_err::write(d.join("app.bin"), vec![1u8; 4999]).unwrap();
    assert_eq!(ok(&["--pub", "a.pub.pem"]).1, "artifactMismatch");
    let mut v = vec![1u8; 5000];
    v[4000] = 9;
    fs_err::write(d.join("app.bin"), v).unwrap();
    assert_eq!(ok(&["--pub", "a.pub.pem"]).1, "artifactMismatch");
    assert_eq!(ok(&["--pub", "a.pub.pem", "--no-artifacts"]), (0, "ok".into()));
    fs_err::remove_file(d.join("app.bin")).unwrap();
    assert_eq!(ok(&["--pub", "a.pub.pem"]).1, "missingArtifact");
    fs_err::write(d.join("app.bin"), vec![1u8; 5000]).unwrap();

    // Tampering with the signed payload: raise the security counter and re-encode.
    let text = fs_err::read_to_string(d.join("release.json")).unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let payload = B64URL.decode(doc["payload"].as_str().unwrap()).unwrap();
    let mut release: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    release["securityCounter"] = 99.into();
    doc["payload"] = B64URL.encode(release.to_string()).into();
    fs_err::write(d.join("release.json"), doc.to_string()).unwrap();
    assert_eq!(ok(&["--pub", "a.pub.pem"]).1, "badSignature");
    // Flip bits in each signature.
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let sig = B64URL.decode(doc["signatures"][1]["signature"].as_str().unwrap()).unwrap();
    let mut bad = sig.clone();
    bad[10] ^= 1;
    doc["signatures"][1]["signature"] = B64URL.encode(&bad).into();
    fs_err::write(d.join("release.json"), doc.to_string()).unwrap();
    assert_eq!(ok(&["--pub", "b.pub.pem"]).1, "badSignature");
    // Signatures stripped.
    doc["signatures"] = serde_json::json!([]);
    fs_err::write(d.join("release.json"), doc.to_string()).unwrap();
    assert_eq!(ok(&["--pub", "a.pub.pem"]).1, "signatureMissing");
    fs_err::write(d.join("release.json"), "{not json").unwrap();
    assert_eq!(ok(&["--pub", "a.pub.pem"]).1, "malformed");
}

#[test]
fn release_metadata_library_checks_use_the_injected_clock() {
    let dir = release_dir();
    let text = fs_err::read_to_string(dir.path().join("release.json")).unwrap();
    let mut keys = TrustedKeys::new();
    keys.add_file(&dir.path().join("a.pub.pem")).unwrap();
    let policy = Policy { threshold: 1, ..Policy::default() };
    let now = SystemTime::now();
    let (release, by) = meta::verify(&text, &keys, &policy, now).unwrap();
    assert_eq!((release.version.as_str(), release.security_counter, by.len()), ("2.4.1", 7, 1));
    assert_eq!(release.artifacts.len(), 2);
    let expires = release.expires.system_time();
    assert!(matches!(meta::verify(&text, &keys, &policy, expires), Err(SignError::Expired { .. })));
    let just_before = expires - Duration::from_secs(1);
    assert!(meta::verify(&text, &keys, &policy, just_before).is_ok());
    let warn = Policy { warn_expiring_days: Some(1), ..policy.clone() };
    assert!(matches!(
        meta::verify(&text, &keys, &warn, just_before),
        Err(SignError::ExpiringSoon { days: 1, .. })
    ));
    meta::verify_artifacts(&release, dir.path()).unwrap();
}

#[test]
#[ignore = "needs PyPI jwcrypto"]
fn jwcrypto_verifies_release_metadata() {
    require_python("jwcrypto", "jwcrypto==1.6.1");
    let dir = release_dir();
    let script = r#"
import json
from jwcrypto import jwk, jws
t = jws.JWS()
t.deserialize(open('release.json').read())
for k in ('a.pub.pem', 'b.pub.pem'):
    t.verify(jwk.JWK.from_pem(open(k, 'rb').read()))
body = json.loads(t.payload)
assert body['securityCounter'] == 7 and body['type'] == 'otaforge.release/1', body
print('ok')
"#;
    let out =
        Command::new("python3").arg("-c").arg(script).current_dir(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

// ---- signed deltas ---------------------------------------------------------------------------

#[test]
fn signed_deltas_verify_before_writing_and_every_tamper_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    keygen(d, "k");
    keygen(d, "other");
    let old: Vec<u8> =
        (0..40_000u32).map(|i| (i.wrapping_mul(2_246_822_519) >> 11) as u8).collect();
    let mut new = old.clone();
    new.splice(1000..1000, vec![7u8; 300]);
    new[20_000] ^= 0xff;
    fs_err::write(d.join("old"), &old).unwrap();
    fs_err::write(d.join("new"), &new).unwrap();
    let (code, json) =
        run_json(d, &["delta", "create", "old", "new", "-o", "s.delta", "--sign-key", "k.pem"]);
    assert_eq!(code, 0, "{json}");
    assert_eq!(json["signed"], true);
    let (code, json) = run_json(d, &["delta", "create", "old", "new", "-o", "u.delta"]);
    assert_eq!((code, json["signed"].as_bool()), (0, Some(false)));
    let (code, _) = run_json(
        d,
        &[
            "delta",
            "create",
            "old",
            "new",
            "-o",
            "b.delta",
            "--delta-format",
            "bsdiff40",
            "--sign-key",
            "k.pem",
        ],
    );
    assert_eq!(code, 2);
    assert!(!d.join("b.delta").exists());

    let apply = |delta: &str, extra: &[&str]| {
        let mut args = vec!["delta", "apply", "old", delta, "-o", "out"];
        args.extend_from_slice(extra);
        let (code, json) = run_json(d, &args);
        let kind = json["error"].as_str().unwrap_or("ok").to_owned();
        if code != 0 {
            assert!(!d.join("out").exists(), "{delta} {extra:?}: output left behind");
            assert!(files_in(d).iter().all(|f| !f.starts_with(".otaforge-")));
        }
        (code, kind)
    };
    assert_eq!(apply("s.delta", &["--verify-key", "k.pub.pem"]), (0, "ok".into()));
    assert_eq!(fs_err::read(d.join("out")).unwrap(), new);
    fs_err::remove_file(d.join("out")).unwrap();
    assert_eq!(apply("s.delta", &["--trusted-keys", "."]), (0, "ok".into()));
    fs_err::remove_file(d.join("out")).unwrap();
    assert_eq!(apply("s.delta", &[]), (1, "noKeyConfigured".into()));
    assert_eq!(apply("u.delta", &["--verify-key", "k.pub.pem"]), (1, "signatureMissing".into()));
    assert_eq!(apply("s.delta", &["--verify-key", "other.pub.pem"]), (1, "unknownKey".into()));
    let (code, json) = run_json(d, &["delta", "info", "s.delta"]);
    assert_eq!(code, 0);
    let kid = json["keyId"].as_str().unwrap().to_owned();
    let (_, shown) = run_json(d, &["key", "show", "k.pub.pem"]);
    assert_eq!(shown["keyId"].as_str().unwrap(), kid);

    let good = fs_err::read(d.join("s.delta")).unwrap();
    let n = good.len();
    let mut cases: Vec<(usize, &str)> = vec![
        (0, "unknownFormat"),
        (9, "badHeader"),
        (17, "badHeader"),
        (30, "corruptDelta"),
        (80, "corruptDelta"),
        (115, "badLength"),
        (130, "corruptDelta"),
        (160, "corruptDelta"),
        (n - 100, "corruptDelta"),
    ];
    cases.extend([
        (n - 96, "unknownKey"),
        (n - 65, "unknownKey"),
        (n - 64, "badSignature"),
        (n - 1, "badSignature"),
    ]);
    for (at, expected) in cases {
        let mut bad = good.clone();
        bad[at] ^= 0x02;
        fs_err::write(d.join("bad.delta"), &bad).unwrap();
        assert_eq!(
            apply("bad.delta", &["--verify-key", "k.pub.pem"]),
            (1, expected.into()),
            "flip at {at}"
        );
    }
    // A forger who changes the header and recomputes the public digest still fails the
    // signature check.
    let mut forged = good.clone();
    forged[30] ^= 0x02;
    let payload_len = u64::from_le_bytes(forged[112..120].try_into().unwrap()) as usize;
    let digest = {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(&forged[..120]);
        h.update(&forged[152..152 + payload_len]);
        h.finalize()
    };
    forged[120..152].copy_from_slice(&digest);
    fs_err::write(d.join("bad.delta"), &forged).unwrap();
    assert_eq!(apply("bad.delta", &["--verify-key", "k.pub.pem"]), (1, "badSignature".into()));
    // Stripping the signature (clearing the flag, recomputing the digest) leaves an unsigned
    // delta, which a configured key refuses.
    let mut stripped = good[..n - 96].to_vec();
    stripped[17] = 0;
    let digest = {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(&stripped[..120]);
        h.update(&stripped[152..]);
        h.finalize()
    };
    stripped[120..152].copy_from_slice(&digest);
    fs_err::write(d.join("bad.delta"), &stripped).unwrap();
    assert_eq!(apply("bad.delta", &["--verify-key", "k.pub.pem"]), (1, "signatureMissing".into()));
    for len in [n - 1, n - 96, 152] {
        fs_err::write(d.join("bad.delta"), &good[..len]).unwrap();
        assert_eq!(apply("bad.delta", &["--verify-key", "k.pub.pem"]).0, 1, "cut to {len}");
    }
}

// ---- MCUboot ---------------------------------------------------------------------------------

fn mcuboot_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path(), "k");
    keygen(dir.path(), "other");
    let app: Vec<u8> = (0..30_001u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8).collect();
    fs_err::write(dir.path().join("app.bin"), &app).unwrap();
    let mut zeroed = vec![0u8; 0x200];
    zeroed.extend_from_slice(&app);
    fs_err::write(dir.path().join("app0.bin"), zeroed).unwrap();
    dir
}

fn imgtool(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("imgtool").args(args).current_dir(dir).output().expect("imgtool")
}

#[test]
#[ignore = "needs PyPI imgtool"]
fn mcuboot_images_are_byte_identical_to_imgtool_and_verify_both_ways() {
    require_tool("imgtool");
    let dir = mcuboot_dir();
    let d = dir.path();
    let variants: &[&[&str]] = &[
        &["-v", "1.2.3+4", "-H", "0x200", "--pad-header", "-S", "0x20000", "app.bin"],
        &["-v", "0.9", "-H", "0x200", "-S", "0x20000", "app0.bin"],
        &["-v", "2.0.1", "-H", "0x200", "--pad-header", "-S", "0x20000", "-s", "auto", "app.bin"],
        &[
            "-v",
            "3.1.4+159",
            "-H",
            "0x400",
            "--pad-header",
            "-s",
            "42",
            "-S",
            "0x10000",
            "--pad",
            "--align",
            "4",
            "app.bin",
        ],
        &[
            "-v",
            "1.0.0",
            "-H",
            "0x200",
            "--pad-header",
            "-S",
            "0x9000",
            "--pad",
            "--align",
            "8",
            "--confirm",
            "app.bin",
        ],
        &[
            "-v",
            "1.0.0",
            "-H",
            "0x200",
            "--pad-header",
            "-S",
            "0x20000",
            "--public-key-format",
            "full",
            "app.bin",
        ],
    ];
    for (i, v) in variants.iter().enumerate() {
        let input = v[v.len() - 1];
        let opts = &v[..v.len() - 1];
        let theirs = format!("theirs{i}.bin");
        let mut args = vec!["sign", "-k", "k.pem"];
        args.extend_from_slice(opts);
        args.extend([input, theirs.as_str()]);
        let out = imgtool(d, &args);
        assert!(out.status.success(), "imgtool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let ours = format!("ours{i}.bin");
        let mut args = vec!["mcuboot", "sign", input, "-o", ours.as_str(), "--key", "k.pem"];
        for o in opts.iter() {
            args.push(match *o {
                "--public-key-format" => "--public-key-full",
                "full" => continue,
                other => other,
            });
        }
        let (code, json) = run_json(d, &args);
        assert_eq!(code, 0, "{args:?}: {json}");
        assert!(
            fs_err::read(d.join(&ours)).unwrap() == fs_err::read(d.join(&theirs)).unwrap(),
            "variant {i} {opts:?}: otaforge and imgtool images differ"
        );
        let out = imgtool(d, &["verify", "-k", "k.pem", &ours]);
        assert!(
            out.status.success(),
            "imgtool verify {ours}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let (code, json) = run_json(d, &["mcuboot", "verify", "--pub", "k.pub.pem", &theirs]);
        assert_eq!(code, 0, "{json}");
    }
    let (code, info) = run_json(d, &["mcuboot", "info", "theirs3.bin"]);
    assert_eq!(code, 0);
    assert_eq!(info["version"], "3.1.4+159");
    assert_eq!(info["securityCounter"], 42);
    assert_eq!(info["headerSize"], 0x400);
    assert_eq!(info["hashValid"], true);
    assert_eq!(info["bootMagic"], true);
    let (_, shown) = run_json(d, &["key", "show", "k.pub.pem"]);
    assert_eq!(info["keyId"], shown["keyId"]);
    let (_, info) = run_json(d, &["mcuboot", "info", "theirs2.bin"]);
    assert_eq!(info["securityCounter"], (2u64 << 24) + 1);
}

#[test]
#[ignore = "needs PyPI imgtool"]
fn mcuboot_refusals_are_specific() {
    require_tool("imgtool");
    let dir = mcuboot_dir();
    let d = dir.path();
    let (code, _) = run_json(
        d,
        &[
            "mcuboot",
            "sign",
            "app.bin",
            "-o",
            "s.bin",
            "--key",
            "k.pem",
            "-v",
            "1.0",
            "-H",
            "0x200",
            "--pad-header",
            "-s",
            "5",
        ],
    );
    assert_eq!(code, 0);
    let good = fs_err::read(d.join("s.bin")).unwrap();
    let info = otaforge::mcuboot::parse(&good).unwrap();
    let tlv = |name: &str| info.tlvs.iter().find(|t| t.name == name).unwrap().offset;
    let kind = |bytes: &[u8], keys: &[&str]| {
        fs_err::write(d.join("bad.bin"), bytes).unwrap();
        let mut args = vec!["mcuboot", "verify", "bad.bin"];
        for k in keys {
            args.extend(["--pub", k]);
        }
        let (code, json) = run_json(d, &args);
        (code, json["error"].as_str().unwrap_or("ok").to_owned())
    };
    assert_eq!(kind(&good, &["k.pub.pem"]), (0, "ok".into()));
    let flips: Vec<(usize, &str)> = vec![
        (0, "badImage"),         // header magic
        (20, "hashMismatch"),    // version
        (0x100, "hashMismatch"), // header padding
        (0x200 + 5, "hashMismatch"),
        (0x200 + 30_000, "hashMismatch"),
        (tlv("SEC_CNT"), "hashMismatch"),
        (tlv("SHA256") + 3, "hashMismatch"),
        (tlv("KEYHASH"), "unknownKey"),
        (tlv("ED25519"), "badSignature"),
        (tlv("ED25519") + 63, "badSignature"),
    ];
    for (at, expected) in flips {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        assert_eq!(kind(&bad, &["k.pub.pem"]), (1, expected.into()), "flip at {at:#x}");
    }
    assert_eq!(kind(&good[..good.len() - 10], &["k.pub.pem"]).1, "badImage");
    assert_eq!(kind(&good, &["other.pub.pem"]).1, "unknownKey");
    assert_eq!(kind(&good, &[]).1, "noKeyConfigured");
    // An image imgtool built without a key has a hash but no signature.
    let out = imgtool(
        d,
        &[
            "sign",
            "-v",
            "1.0",
            "-H",
            "0x200",
            "--pad-header",
            "-S",
            "0x20000",
            "app.bin",
            "unsigned.bin",
        ],
    );
    assert!(out.status.success());
    assert_eq!(
        kind(&fs_err::read(d.join("unsigned.bin")).unwrap(), &["k.pub.pem"]).1,
        "signatureMissing"
    );

    // Sign-time refusals name the problem and write nothing.
    let out = otaforge()
        .current_dir(d)
        .args([
            "mcuboot", "sign", "app.bin", "-o", "x.bin", "--key", "k.pem", "-v", "1.0", "-H",
            "0x200",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pad-header"));
    let out = otaforge()
        .current_dir(d)
        .args([
            "mcuboot",
            "sign",
            "app.bin",
            "-o",
            "x.bin",
            "--key",
            "k.pem",
            "-v",
            "1.0",
            "-H",
            "0x200",
            "--pad-header",
            "-S",
            "0x7800",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exceeds the slot size"));
    let out = otaforge()
        .current_dir(d)
        .args(["mcuboot", "sign", "app.bin", "-o", "x.bin", "--key", "k.pem", "-v", "256.0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(!d.join("x.bin").exists());
}

#[test]
#[ignore = "needs PyPI imgtool"]
fn mcuboot_reads_imgtool_pure_signatures() {
    require_tool("imgtool");
    let dir = mcuboot_dir();
    let d = dir.path();
    let help = imgtool(d, &["sign", "--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("--pure"), "imgtool 2.5 has --pure");
    let out = imgtool(
        d,
        &[
            "sign",
            "-k",
            "k.pem",
            "--pure",
            "-v",
            "1.1",
            "-H",
            "0x200",
            "--pad-header",
            "-S",
            "0x20000",
            "app.bin",
            "pure.bin",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (code, json) = run_json(d, &["mcuboot", "verify", "--pub", "k.pub.pem", "pure.bin"]);
    assert_eq!(code, 0, "{json}");
}
