//! Writes the sha256 of files in the format `sha256sum -c` reads.
//!
//! Parameters:
//! - `dir` (required): the directory whose files are summed, e.g.
//!   `${{ inputs.pack }}`.
//! - `output` (default `SHA256SUMS`): the sums file in the workspace.
//!
//! Paths in the file are relative to `dir`, sorted.

use airlock_plugin::{Context, Describe, Step, files_below};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::io::Read;

struct Sums;

impl Step for Sums {
    fn run(ctx: Context) -> Result<(), String> {
        let dir = ctx.resolve(ctx.require("dir")?);
        let output = ctx.resolve(ctx.param("output").unwrap_or("SHA256SUMS"));
        let mut sums = String::new();
        let files = files_below(&dir)?;
        for rel in &files {
            let path = dir.join(rel);
            let mut file = std::fs::File::open(&path).describe(|| format!("cannot open {}", path.display()))?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = file.read(&mut buf).describe(|| format!("cannot read {}", path.display()))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            let digest = hasher.finalize();
            for byte in digest {
                let _ = write!(sums, "{byte:02x}");
            }
            let _ = writeln!(sums, "  {}", rel.display());
        }
        if files.is_empty() {
            return Err(format!("no files to sum under {}", dir.display()));
        }
        std::fs::write(&output, &sums).describe(|| format!("cannot write {}", output.display()))?;
        print!("{sums}");
        Ok(())
    }
}

airlock_plugin::export!(Sums);
