//! Attack: fill an output directory with 200,000 empty files, to stall or
//! exhaust whatever walks it afterwards.

fn main() {
    std::fs::create_dir_all("out").expect("mkdir out");
    for i in 0..200_000 {
        if let Err(e) = std::fs::write(format!("out/{i:06}"), "") {
            println!("stopped at file {i}: {e}");
            std::process::exit(1);
        }
        if i % 20_000 == 0 {
            println!("{i} files");
        }
    }
    println!("200000 files");
}
