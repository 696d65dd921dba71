//! Attacks on time: never finishing, in guest code or inside the host.

use crate::lab::Lab;
use std::time::Duration;

#[test]
fn attack_infinite_loop() {
    let lab = Lab::new();
    let r = lab.attack(&format!("uses: {}\ntimeout: 500ms", lab.guest("spin")), &[]);
    r.assert_contained("step `attack` ran past its 500ms timeout");
}

#[test]
fn attack_infinite_loop_with_fuel_metering() {
    let lab = Lab::new();
    let r = lab.attack(&format!("uses: {}\nlimits: {{ fuel: 5000000 }}", lab.guest("spin")), &[]);
    r.assert_contained("step `attack` used up its fuel of 5000000 instructions");
}

#[test]
fn attack_block_forever_on_a_clock_in_poll() {
    let lab = Lab::new();
    let r = lab.attack(&format!("uses: {}\ntimeout: 500ms", lab.guest("sleep-forever")), &[]);
    r.assert_contained("step `attack` ran past its 500ms timeout");
    assert!(r.log().contains("going to sleep"), "{}", r.log());
    assert!(r.run.elapsed < Duration::from_secs(30), "the run took {:?}", r.run.elapsed);
}

#[test]
fn attack_host_calls_in_a_tight_loop() {
    let lab = Lab::new();
    let r = lab.attack(&format!("uses: {}\ntimeout: 500ms", lab.guest("host-call-loop")), &[]);
    r.assert_contained("step `attack` ran past its 500ms timeout");
}

#[test]
fn attack_host_calls_in_a_tight_loop_with_fuel_metering() {
    let lab = Lab::new();
    let r = lab.attack(&format!("uses: {}\nlimits: {{ fuel: 5000000 }}", lab.guest("host-call-loop")), &[]);
    r.assert_contained("step `attack` used up its fuel of 5000000 instructions");
}
