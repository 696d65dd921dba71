//! Signed provenance of a publish, checked by airlock and by an
//! independent DSSE implementation (securesystemslib, from PyPI, which
//! `.ci/test-setup` installs), and tampering caught by both.

use crate::support::{Scratch, Server, airlock, files_below, http, output, plugins, repo};
use base64::Engine as _;

/// Verifies `envelope` (a file) with the public key `pem` using
/// securesystemslib: its DSSE envelope and ed25519 code, not airlock's.
/// Answers the statement, or what the library said.
fn independent_verify(envelope: &std::path::Path, pem: &std::path::Path) -> Result<serde_json::Value, String> {
    let python = repo().join("target/tools/dsse/bin/python");
    assert!(python.exists(), "{} is missing; run `bash .ci/test-setup`", python.display());
    let script = r#"
import json, sys
from cryptography.hazmat.primitives import serialization
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey
raw = serialization.load_pem_public_key(open(sys.argv[2], "rb").read()).public_bytes(
    serialization.Encoding.Raw, serialization.PublicFormat.Raw)
env = Envelope.from_dict(json.loads(open(sys.argv[1]).readline()))
key = SSlibKey(env.signatures and list(env.signatures)[0] or "none", "ed25519", "ed25519", {"public": raw.hex()})
try:
    env.verify([key], 1)
except Exception as e:
    print(type(e).__name__, e, file=sys.stderr)
    sys.exit(1)
assert env.payload_type == "application/vnd.in-toto+json", env.payload_type
print(env.payload.decode())
"#;
    let out = std::process::Command::new(python).arg("-c").arg(script).arg(envelope).arg(pem).output().expect("python");
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("the statement is JSON"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn a_publish_carries_provenance_that_an_independent_verifier_accepts_and_tampering_fails() {
    let s = Scratch::new();
    let key = s.path().join("keys/signing.pem");
    std::fs::create_dir_all(key.parent().expect("dir")).expect("mkdir");
    let made = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&key)
        .status()
        .expect("openssl");
    assert!(made.success());
    let secret = std::fs::read_to_string(&key).expect("key");
    let viewer = crate::support::user_token(s.path());
    let policy = s.file(
        "policy.yaml",
        format!(
            "users:\n  vic: {{ token_sha256: {}, roles: [viewer] }}\ntargets:\n  site:\n    dir: published/site\n\
             environments:\n  www:\n    provider: {{ type: directory, path: www }}\n    pipelines: [docs]\n\
             provenance:\n  key: {{ file: keys/signing.pem }}\n  builder_id: https://ci.example.org/airlock\n",
            viewer.digest
        ),
    );
    s.file("src/index.md", "# Home\n");
    s.file("src/guide.md", "# Guide\n");
    let pipeline = s.pipeline(
        "name: docs\nsources: { src: src }\nsteps:\n  render:\n    \
         uses: {plugins}/wasm32-wasip2/release/markdown.wasm\n    inputs: [src]\n    \
         with: { src: '${{ inputs.src }}', out: html }\n    outputs: [html]\n  \
         ship:\n    needs: [render]\n    publish: { target: site, build: b1, from: [render] }\n  \
         live:\n    needs: [render]\n    deploy: { environment: www, from: [render] }\n",
    );
    plugins();
    let (code, _, stderr) = output(airlock(&s.state()).arg("--policy").arg(&policy).arg("run").arg(&pipeline));
    assert_eq!(code, 0, "{stderr}");
    let show = s.show();
    let run_id = show["run"]["id"].as_str().expect("run").to_owned();
    let steps = show["steps"].as_array().expect("steps");
    let render = steps.iter().find(|st| st["name"] == "render").expect("render");
    let ship = steps.iter().find(|st| st["name"] == "ship").expect("ship");
    assert!(ship["published"]["provenance"].as_str().is_some_and(|d| d.len() == 64), "{ship}");

    // Served beside the tree, to anyone who can read the tree.
    let pipelines = s.path().join("pipelines");
    std::fs::create_dir_all(&pipelines).expect("mkdir");
    let mut server = Server::start(&s.state(), &policy, &pipelines, &[]);
    let get = |path: &str| {
        let resp = http().get(&format!("{}{path}", server.url)).call().expect("GET");
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        resp.into_body().read_to_vec().expect("body")
    };
    let envelope = get("/site/b1.intoto.jsonl");
    // And through the run API, for the step that published it.
    let (status, _) = crate::support::call(
        &http(),
        "GET",
        &format!("{}/api/v1/runs/{run_id}/steps/render/provenance", server.url),
        Some(&viewer.token),
        None,
        &[],
    )
    .expect("call");
    assert_eq!(status, 404, "a plugin step has no provenance");
    let resp = http()
        .get(&format!("{}/api/v1/runs/{run_id}/steps/ship/provenance", server.url))
        .header("authorization", &format!("Bearer {}", viewer.token))
        .call()
        .expect("GET");
    assert_eq!(resp.into_body().read_to_vec().expect("body"), envelope);
    // The deployment has its own, of what was deployed.
    let resp = http()
        .get(&format!("{}/api/v1/runs/{run_id}/steps/live/provenance", server.url))
        .header("authorization", &format!("Bearer {}", viewer.token))
        .call()
        .expect("GET");
    let deployed = s.file("download/live.intoto.jsonl", resp.into_body().read_to_vec().expect("body"));
    let file = s.file("download/b1.intoto.jsonl", &envelope);
    let tree = s.path().join("download/tree");
    let subjects: Vec<(String, String)> = render["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .map(|o| (o["path"].as_str().expect("path").to_owned(), o["sha256"].as_str().expect("sha").to_owned()))
        .collect();
    for (path, _) in &subjects {
        s.file(&format!("download/tree/{path}"), get(&format!("/site/b1/{path}")));
    }

    // The key to check it with, from the policy, and airlock's check.
    let (code, pem, stderr) = output(airlock(&s.state()).arg("--policy").arg(&policy).args(["attest", "key"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    let pem_file = s.file("download/airlock.pub.pem", &pem);
    let verify = |file: &std::path::Path, tree: Option<&std::path::Path>| {
        let mut cmd = airlock(&s.state());
        cmd.args(["attest", "verify", "--json", "--key"]).arg(&pem_file).arg(file);
        if let Some(tree) = tree {
            cmd.arg("--tree").arg(tree);
        }
        let (code, stdout, _) = output(&mut cmd);
        (code, serde_json::from_str::<serde_json::Value>(&stdout).expect("JSON"))
    };
    let (code, checked) = verify(&file, Some(&tree));
    assert_eq!(code, 0, "{checked}");
    let (code, live) = verify(&deployed, Some(&tree));
    assert_eq!(code, 0, "{live}");
    assert_eq!(live["statements"][0]["subject"], checked["statements"][0]["subject"], "the same files went live");
    assert!(independent_verify(&deployed, &pem_file).is_ok());

    // An implementation that is not airlock's agrees, and says what it holds.
    let statement = independent_verify(&file, &pem_file).expect("securesystemslib verifies the envelope");
    assert_eq!(statement, checked["statements"][0]);
    assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(statement["predicateType"], "https://slsa.dev/provenance/v1");
    let mut named: Vec<(String, String)> = statement["subject"]
        .as_array()
        .expect("subjects")
        .iter()
        .map(|x| (x["name"].as_str().expect("name").to_owned(), x["digest"]["sha256"].as_str().expect("d").to_owned()))
        .collect();
    named.sort();
    let mut expected = subjects.clone();
    expected.sort();
    assert_eq!(named, expected, "the subjects are the published files");
    let predicate = &statement["predicate"];
    assert_eq!(predicate["buildDefinition"]["buildType"], "urn:airlock:build-type:pipeline:v1");
    assert_eq!(predicate["runDetails"]["builder"]["id"], "https://ci.example.org/airlock");
    assert_eq!(predicate["runDetails"]["metadata"]["invocationId"], run_id.as_str());
    let pipeline_text = std::fs::read(&pipeline).expect("pipeline");
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&pipeline_text));
    assert_eq!(predicate["buildDefinition"]["externalParameters"]["pipeline"]["sha256"], digest.as_str());
    let dependencies = predicate["buildDefinition"]["resolvedDependencies"].to_string();
    let markdown = std::fs::read(plugins().join("wasm32-wasip2/release/markdown.wasm")).expect("plugin");
    assert!(dependencies.contains(&hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&markdown))), "{dependencies}");
    assert!(dependencies.contains("source:src") && dependencies.contains("airlockTreeSha256"), "{dependencies}");

    // A subject changed in the statement: neither accepts it.
    let mut parsed: serde_json::Value = serde_json::from_slice(&envelope).expect("JSON");
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut forged = statement.clone();
    forged["subject"][0]["digest"]["sha256"] = "0".repeat(64).into();
    parsed["payload"] = b64.encode(serde_json::to_vec(&forged).expect("JSON")).into();
    let tampered = s.file("download/forged.intoto.jsonl", format!("{parsed}\n"));
    assert!(independent_verify(&tampered, &pem_file).is_err(), "securesystemslib accepted a changed subject");
    let (code, refused) = verify(&tampered, None);
    assert_eq!(code, 1, "{refused}");
    assert!(refused["problems"][0].as_str().expect("why").contains("no signature of the envelope verifies"));
    // A file of the tree changed after it was published: the check of
    // the tree names it.
    let (first, _) = &subjects[0];
    s.file(&format!("download/tree/{first}"), "changed");
    let (code, refused) = verify(&file, Some(&tree));
    assert_eq!(code, 1, "{refused}");
    assert!(refused["problems"].to_string().contains(first.as_str()), "{refused}");

    server.stop();
    // A key that cannot be read: the publish fails, saying so, and
    // publishes nothing unsigned (the cache gives `render` at once).
    std::fs::rename(&key, s.path().join("keys/elsewhere.pem")).expect("move the key");
    let text = std::fs::read_to_string(&pipeline).expect("pipeline").replace("build: b1", "build: b2");
    std::fs::write(&pipeline, text).expect("write");
    let (code, _, stderr) = output(airlock(&s.state()).arg("--policy").arg(&policy).arg("run").arg(&pipeline));
    assert_eq!(code, 1, "{stderr}");
    let reason = s.step("ship")["reason"].as_str().expect("reason").to_owned();
    assert!(reason.contains("`provenance.key`") && reason.contains("signing.pem"), "{reason}");
    assert!(!s.path().join("published/site/builds/b2.json").exists(), "a tree was published unsigned");
    let reason = s.step("live")["reason"].as_str().expect("reason").to_owned();
    assert!(reason.contains("`provenance.key`"), "{reason}");
    std::fs::rename(s.path().join("keys/elsewhere.pem"), &key).expect("move the key back");

    // The signing key is in nothing airlock wrote, nor in any answer.
    let body: String = secret.lines().filter(|l| !l.starts_with("-----")).collect();
    for f in files_below(&s.state()).into_iter().chain(files_below(&s.path().join("published"))) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(memchr::memmem::find(&bytes, body.as_bytes()).is_none(), "{} holds the signing key", f.display());
    }
    assert!(!String::from_utf8_lossy(&envelope).contains(&body));
}
