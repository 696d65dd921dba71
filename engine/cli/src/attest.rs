//! `airlock attest`: the public key that checks this airlock's
//! provenance, and checking a provenance file with it.

use crate::exit;
use airlock_host::provenance::{Signer, public_key_from_pem, subjects, verify};
use std::path::{Path, PathBuf};

/// `airlock attest verify`'s arguments.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The provenance: a DSSE envelope as airlock publishes it beside a
    /// tree (`BUILD.intoto.jsonl`), one per line.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The public key (PEM, `-----BEGIN PUBLIC KEY-----`) that signed it:
    /// what `airlock attest key` prints.
    #[arg(long, value_name = "PEM")]
    key: PathBuf,
    /// Also check that every subject is in this directory with its sha256
    /// (a downloaded copy of the published tree).
    #[arg(long, value_name = "DIR")]
    tree: Option<PathBuf>,
    /// Print the statement (or why it failed) as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// `airlock attest key`: the public key of the policy's provenance key.
pub fn key(policy: Option<&Path>) -> anyhow::Result<u8> {
    let Some(path) = policy else {
        eprintln!("error: `airlock attest key` needs the admin policy that names the signing key (`--policy FILE`)");
        return Ok(exit::USAGE);
    };
    let Some(loaded) = crate::policy::load(path)? else { return Ok(exit::FAILED) };
    let Some(provenance) = &loaded.policy.provenance else {
        eprintln!("error: the policy {} has no `provenance:`, so airlock signs nothing", path.display());
        eprintln!(
            "hint: add `provenance: {{ key: {{ file: PATH }}, builder_id: URI }}`; see the book's Provenance page"
        );
        return Ok(exit::FAILED);
    };
    let pem = match airlock_host::deploy::read_credential(&provenance.key.source, &loaded.dir) {
        Ok(pem) => pem,
        Err(e) => {
            eprintln!("error: the policy's `provenance.key` {e}");
            return Ok(exit::FAILED);
        }
    };
    match Signer::from_pem(pem.expose().as_bytes()) {
        Ok(signer) => {
            print!("{}", signer.public_pem());
            eprintln!("key id {}", signer.keyid());
            Ok(exit::OK)
        }
        Err(e) => {
            eprintln!("error: `provenance.key`: {e}");
            Ok(exit::FAILED)
        }
    }
}

/// `airlock attest verify`: exit 0 if every envelope in the file is
/// signed by the key (and its subjects are in `--tree`), 1 if not.
pub fn verify_file(args: &VerifyArgs) -> anyhow::Result<u8> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()));
    let public = match public_key_from_pem(&read(&args.key)?) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {}: {e}", args.key.display());
            return Ok(exit::USAGE);
        }
    };
    let text = read(&args.file)?;
    let mut statements = Vec::new();
    let mut problems = Vec::new();
    for (i, line) in text.split(|b| *b == b'\n').enumerate().filter(|(_, l)| !l.trim_ascii().is_empty()) {
        match verify(line, &public) {
            Ok(statement) => statements.push(statement),
            Err(e) => problems.push(format!("{}:{}: {e}", args.file.display(), i + 1)),
        }
    }
    if statements.is_empty() && problems.is_empty() {
        problems.push(format!("{}: holds no envelope", args.file.display()));
    }
    if let Some(tree) = &args.tree {
        for statement in &statements {
            for (name, sha256) in subjects(statement) {
                let path = tree.join(&name);
                match airlock_host::file_digest(&path) {
                    Ok(found) if found == sha256 => {}
                    Ok(found) => problems.push(format!("`{name}` has sha256 {found}, the statement says {sha256}")),
                    Err(e) => problems.push(format!("`{name}`: {e}")),
                }
            }
        }
    }
    if args.json {
        let out =
            serde_json::json!({ "verified": problems.is_empty(), "problems": problems, "statements": statements });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for statement in &statements {
            let details = &statement["predicate"]["runDetails"];
            eprintln!(
                "signed by {} (builder {}), run {}:",
                airlock_host::provenance::key_id(&public),
                details["builder"]["id"].as_str().unwrap_or("?"),
                details["metadata"]["invocationId"].as_str().unwrap_or("?")
            );
            for (name, sha256) in subjects(statement) {
                println!("sha256:{sha256}  {name}");
            }
        }
        for p in &problems {
            eprintln!("error: {p}");
        }
    }
    Ok(if problems.is_empty() { exit::OK } else { exit::FAILED })
}
