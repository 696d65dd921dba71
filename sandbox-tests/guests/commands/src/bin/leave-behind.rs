//! Attack: leave files in the workspace for whichever step gets the
//! directory next, then succeed, or fail so that a retry finds them.
//! `leave-behind succeed|fail`.

fn main() {
    std::fs::write("planted.txt", "left for the next step\n").expect("write");
    std::fs::create_dir_all("hidden/.dir").expect("mkdir");
    std::fs::write("hidden/.dir/.planted", "x").expect("write");
    let seen: Vec<_> = std::fs::read_dir(".").expect("list").flatten().map(|e| e.file_name()).collect();
    println!("workspace holds {seen:?}");
    if std::env::args().nth(1).as_deref() == Some("fail") {
        std::process::exit(1);
    }
}
