//! Attack: take all the memory there is, 16 MiB at a time, touching every
//! page so none of it stays virtual.

fn main() {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![0xa5; 16 << 20]);
        println!("holding {} MiB", hoard.len() * 16);
    }
}
