//! Attack: recurse without end, to overflow the stack into whatever lies
//! beyond it.

#[inline(never)]
fn deeper(n: u64, pad: [u64; 8]) -> u64 {
    let pad = std::hint::black_box(pad);
    if std::hint::black_box(n) == u64::MAX {
        return 0;
    }
    deeper(n + 1, [n; 8]).wrapping_add(pad[0])
}

fn main() {
    println!("{}", deeper(0, [0; 8]));
}
