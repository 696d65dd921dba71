//! Attacks on the network: refused when the plugin is linked, before any
//! of its code runs.

use crate::lab::Lab;
use std::io::ErrorKind;

#[test]
fn attack_tcp_and_udp_connections() {
    let lab = Lab::new();
    // Something to connect to, to show that nothing ever does.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let r = lab.attack(&format!("uses: {}\nargs: ['{port}']", lab.guest("connect")), &[]);
    r.assert_contained(
        "plugin `connect.wasm` imports `wasi:sockets/network@0.2.6`, `wasi:sockets/instance-network@0.2.6`, \
         `wasi:sockets/udp@0.2.6`, `wasi:sockets/udp-create-socket@0.2.6`, `wasi:sockets/tcp@0.2.6`, \
         `wasi:sockets/tcp-create-socket@0.2.6`, `wasi:sockets/ip-name-lookup@0.2.6`, which this step is not granted",
    );
    assert_eq!(r.step("attack")["attempts"], 0, "refused before it started");
    assert_eq!(listener.accept().map(|_| ()).map_err(|e| e.kind()), Err(ErrorKind::WouldBlock), "nothing connected");
}

#[test]
fn attack_name_lookup() {
    let lab = Lab::new();
    let r = lab.attack(&format!("uses: {}", lab.guest("lookup")), &[]);
    r.assert_contained(
        "plugin `lookup.wasm` imports `wasi:sockets/network@0.2.6`, `wasi:sockets/instance-network@0.2.6`, \
         `wasi:sockets/ip-name-lookup@0.2.6`, which this step is not granted",
    );
    assert_eq!(r.step("attack")["attempts"], 0, "refused before it started");
}

#[test]
fn attack_outgoing_http() {
    let lab = Lab::new();
    let r = lab.attack(&format!("uses: {}", lab.wat("http")), &[]);
    r.assert_contained(
        "plugin `http.wasm` imports `wasi:http/outgoing-handler@0.2.0`, `wasi:http/types@0.2.0`, which this step is not granted",
    );
    assert_eq!(r.step("attack")["attempts"], 0, "refused before it started");
}
