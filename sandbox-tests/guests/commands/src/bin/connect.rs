//! Attack: reach the network. Connects over TCP to loopback and to a
//! public address, and sends a UDP datagram. Rust's standard library
//! makes this a component importing `wasi:sockets`, which airlock refuses
//! to link.

use hostile_commands::Attempts;
use std::io::Write;

fn main() {
    let mut a = Attempts::default();
    let port = std::env::args().nth(1).unwrap_or_else(|| "80".into());
    for addr in [format!("127.0.0.1:{port}"), "203.0.113.7:443".into()] {
        a.check(
            &format!("connect to {addr}"),
            std::net::TcpStream::connect(&addr).and_then(|mut s| s.write_all(b"GET / HTTP/1.0\r\n\r\n")),
        );
    }
    a.check(
        "send a UDP datagram",
        std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| s.send_to(b"hello", format!("127.0.0.1:{port}"))),
    );
    a.finish();
}
