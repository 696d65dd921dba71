//! A guest's stdout and stderr: whatever sequence of writes it makes, the
//! log keeps exactly the first `cap` bytes and counts all of them.

#![no_main]

use airlock_sandbox::LogSink;
use libfuzzer_sys::fuzz_target;
use wasmtime_wasi::p2::OutputStream;

fuzz_target!(|input: (u16, Vec<Vec<u8>>)| {
    let (cap, writes) = input;
    let sink = LogSink::new(cap as usize);
    let mut stdout = sink.clone();
    let mut stderr = sink.clone();
    let mut all = Vec::new();
    for (i, w) in writes.iter().enumerate() {
        let stream = if i % 2 == 0 { &mut stdout } else { &mut stderr };
        assert!(stream.check_write().expect("writable") > 0);
        stream.write(bytes::Bytes::copy_from_slice(w)).expect("write");
        all.extend_from_slice(w);
    }
    let (kept, written) = sink.take();
    assert_eq!(written, all.len() as u64);
    assert_eq!(kept, all[..all.len().min(cap as usize)]);
});
