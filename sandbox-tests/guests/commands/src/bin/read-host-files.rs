//! Attack: read files of the host. Tries well-known host files, paths
//! climbing out of the workspace and the inputs with `..`, absolute host
//! paths given as arguments (the tests pass the canary file beside the
//! state directory), and listing the root.

use hostile_commands::Attempts;

fn main() {
    let mut a = Attempts::default();
    let mut paths: Vec<String> = [
        "/etc/passwd",
        "/etc/hostname",
        "/proc/self/environ",
        "/proc/self/cmdline",
        "../secret.txt",
        "../../secret.txt",
        "../../../secret.txt",
        "../../../../secret.txt",
        "/workspace/../secret.txt",
        "/workspace/../../../secret.txt",
        "/inputs/src/../../secret.txt",
        "/inputs/src/../../../../../../etc/passwd",
        "/inputs/../../etc/passwd",
    ]
    .map(String::from)
    .to_vec();
    paths.extend(std::env::args().skip(1));
    for path in &paths {
        a.check(&format!("read {path}"), std::fs::read_to_string(path));
    }
    for dir in ["/", "/etc", "..", "/workspace/..", "/inputs/src/.."] {
        let listing =
            std::fs::read_dir(dir).and_then(|d| d.map(|e| e.map(|e| e.file_name())).collect::<Result<Vec<_>, _>>());
        // Listing `/` shows the preopens the guest was given, and nothing
        // else; that much is not an escape.
        match listing {
            Ok(names) if dir == "/" && names.iter().all(|n| n == "workspace" || n == "inputs") => {
                println!("refused: list /: only the preopens {names:?}")
            }
            other => a.check(&format!("list {dir}"), other),
        }
    }
    a.finish();
}
