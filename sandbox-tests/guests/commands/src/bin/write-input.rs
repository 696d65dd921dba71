//! Attack: change an input, which is mounted read-only: overwrite,
//! append, truncate, create, delete, rename, and change permissions.
//! `write-input [DIR FILE]...` attacks those directories and files (a
//! step's mounts) instead of the two inputs of the lab.

use hostile_commands::Attempts;
use std::fs::OpenOptions;
use std::io::Write;

fn main() {
    let mut a = Attempts::default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let targets: Vec<(&str, &str)> = if args.is_empty() {
        vec![("/inputs/src", "/inputs/src/a.txt"), ("/inputs/before", "/inputs/before/counts.txt")]
    } else {
        args.chunks(2).map(|p| (p[0].as_str(), p.get(1).map_or("", String::as_str))).collect()
    };
    for (dir, file) in targets {
        a.check(&format!("overwrite {file}"), std::fs::write(file, "overwritten"));
        a.check(
            &format!("append to {file}"),
            OpenOptions::new().append(true).open(file).and_then(|mut f| f.write_all(b"appended")),
        );
        a.check(&format!("truncate {file}"), OpenOptions::new().write(true).open(file).and_then(|f| f.set_len(0)));
        a.check(&format!("create {dir}/new.txt"), std::fs::write(format!("{dir}/new.txt"), "new"));
        a.check(&format!("mkdir {dir}/sub"), std::fs::create_dir(format!("{dir}/sub")));
        a.check(&format!("rename {file}"), std::fs::rename(file, format!("{file}.moved")));
        a.check(&format!("move {file} into the workspace"), std::fs::rename(file, "/workspace/moved"));
        a.check(&format!("delete {file}"), std::fs::remove_file(file));
        let perms = std::fs::metadata(file).map(|m| {
            let mut p = m.permissions();
            // Making the file writable is the point of the attack.
            #[allow(clippy::permissions_set_readonly_false)]
            p.set_readonly(false);
            p
        });
        a.check(&format!("chmod {file}"), perms.and_then(|p| std::fs::set_permissions(file, p)));
    }
    a.finish();
}
