//! Packs a directory into a reproducible `.tar.gz`.
//!
//! Parameters:
//! - `dir` (required): the directory to pack, e.g. `${{ inputs.render }}/site`.
//! - `output` (default `archive.tar.gz`): the archive's path in the workspace.
//! - `prefix` (default: none): a directory name every entry is placed under.
//!
//! Entries are sorted, owned by 0:0 with mode 0644 and a zero mtime, so the
//! same tree always gives the same bytes and the same digest.

use airlock_plugin::{Context, Describe, Step, files_below};
use flate2::{Compression, write::GzEncoder};
use std::path::PathBuf;

struct TarGz;

impl Step for TarGz {
    fn run(ctx: Context) -> Result<(), String> {
        let dir = ctx.resolve(ctx.require("dir")?);
        let output = ctx.resolve(ctx.param("output").unwrap_or("archive.tar.gz"));
        let prefix = PathBuf::from(ctx.param("prefix").unwrap_or(""));
        let files = files_below(&dir)?;
        if files.is_empty() {
            return Err(format!("nothing to pack: {} has no files", dir.display()));
        }
        if let Some(parent) = output.parent() {
            std::fs::create_dir_all(parent).describe(|| format!("cannot create {}", parent.display()))?;
        }
        let file = std::fs::File::create(&output).describe(|| format!("cannot create {}", output.display()))?;
        let mut archive = tar::Builder::new(GzEncoder::new(file, Compression::best()));
        archive.mode(tar::HeaderMode::Deterministic);
        let mut bytes = 0u64;
        for rel in &files {
            let path = dir.join(rel);
            let data = std::fs::read(&path).describe(|| format!("cannot read {}", path.display()))?;
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            archive
                .append_data(&mut header, prefix.join(rel), data.as_slice())
                .describe(|| format!("cannot add {} to the archive", rel.display()))?;
            bytes += data.len() as u64;
        }
        let gz = archive.into_inner().describe(|| "cannot finish the archive".into())?;
        gz.finish().describe(|| format!("cannot write {}", output.display()))?;
        println!("packed {} file(s), {bytes} bytes, into {}", files.len(), output.display());
        Ok(())
    }
}

airlock_plugin::export!(TarGz);
