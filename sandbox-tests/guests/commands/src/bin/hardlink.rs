//! Attack: hard-link a file of an input into the workspace (to write it
//! through the link, or take it out as an output), then leave a hard link
//! inside the workspace as an output.

use hostile_commands::Attempts;

fn main() {
    let mut a = Attempts::default();
    std::fs::create_dir_all("out").expect("mkdir out");
    a.check("link /inputs/src/a.txt to out/stolen", std::fs::hard_link("/inputs/src/a.txt", "out/stolen"));
    a.check("link ../secret.txt to out/secret", std::fs::hard_link("../secret.txt", "out/secret"));
    std::fs::write("out/one.txt", "one file, two names\n").expect("write");
    match std::fs::hard_link("out/one.txt", "out/two.txt") {
        Ok(()) => println!("made: out/two.txt, a second name for out/one.txt"),
        Err(e) => println!("refused: link out/one.txt to out/two.txt: {e}"),
    }
    std::process::exit(0);
}
