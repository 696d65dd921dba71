//! Checks that JSON and YAML files parse.
//!
//! Parameters:
//! - `dir` (required): the directory to check, e.g. `${{ inputs.pages }}`.
//!
//! Every `*.json`, `*.yaml` and `*.yml` file below `dir` is parsed; each
//! one that does not parse is reported with its line and column, and the
//! step fails if any did not. It writes `lint-report.txt` to the workspace.

use airlock_plugin::{Context, Describe, Step, files_below};

struct Lint;

impl Step for Lint {
    fn run(ctx: Context) -> Result<(), String> {
        let dir = ctx.resolve(ctx.require("dir")?);
        let mut report = String::new();
        let (mut checked, mut bad) = (0, 0);
        for rel in files_below(&dir)? {
            let ext = rel.extension().and_then(|e| e.to_str()).unwrap_or("");
            if !matches!(ext, "json" | "yaml" | "yml") {
                continue;
            }
            let path = dir.join(&rel);
            let text = std::fs::read_to_string(&path).describe(|| format!("cannot read {}", path.display()))?;
            checked += 1;
            let problem = if ext == "json" {
                serde_json::from_str::<serde_json::Value>(&text)
                    .err()
                    .map(|e| format!("{}:{}:{}: {e}", rel.display(), e.line(), e.column()))
            } else {
                serde_yaml::from_str::<serde_yaml::Value>(&text).err().map(|e| match e.location() {
                    Some(at) => format!("{}:{}:{}: {e}", rel.display(), at.line(), at.column()),
                    None => format!("{}: {e}", rel.display()),
                })
            };
            match problem {
                Some(line) => {
                    bad += 1;
                    eprintln!("{line}");
                    report.push_str(&line);
                    report.push('\n');
                }
                None => report.push_str(&format!("{}: ok\n", rel.display())),
            }
        }
        let out = ctx.workspace().join("lint-report.txt");
        std::fs::write(&out, &report).describe(|| format!("cannot write {}", out.display()))?;
        println!("checked {checked} file(s), {bad} with errors");
        if bad > 0 {
            return Err(format!("{bad} of {checked} file(s) do not parse; see the log"));
        }
        Ok(())
    }
}

airlock_plugin::export!(Lint);
