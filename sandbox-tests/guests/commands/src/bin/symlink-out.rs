//! Attack: make links in the workspace that point outside it, read
//! through them, then leave them as outputs for the host to follow.

use hostile_commands::Attempts;

fn main() {
    let mut a = Attempts::default();
    std::fs::create_dir_all("out").expect("mkdir out");
    std::fs::write("out/ok.txt", "an honest output\n").expect("write");
    for (target, link) in
        [("../../../../../../etc/passwd", "out/passwd"), ("/etc/passwd", "out/passwd-absolute"), ("../../..", "out/up")]
    {
        // `soft_link` is the portable spelling of `symlink`; WASI has no
        // `std::os::unix`.
        #[allow(deprecated)]
        match std::fs::soft_link(target, link) {
            Ok(()) => println!("made: {link} -> {target}"),
            Err(e) => println!("refused: symlink {link} -> {target}: {e}"),
        }
    }
    a.check("read out/passwd", std::fs::read_to_string("out/passwd"));
    a.check("read out/passwd-absolute", std::fs::read_to_string("out/passwd-absolute"));
    a.check("read out/up/secret.txt", std::fs::read_to_string("out/up/secret.txt"));
    a.check("list out/up", std::fs::read_dir("out/up").map(|d| d.count()));
    // Links stay behind as declared outputs: extraction must refuse them.
    std::process::exit(0);
}
