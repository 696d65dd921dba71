//! Attacks on memory: linear memory, tables, the stack.

use crate::lab::Lab;

#[test]
fn attack_allocate_without_end() {
    let lab = Lab::new();
    let r = lab.attack(&format!("uses: {}\nlimits: {{ memory: 64MiB }}", lab.guest("grow-memory")), &[]);
    r.assert_contained("step `attack` exceeded its 64 MiB memory limit");
    assert!(r.log().contains("holding 48 MiB"), "{}", r.log());
    assert!(!r.log().contains("holding 80 MiB"), "{}", r.log());
}

#[test]
fn attack_grow_a_table_without_end() {
    let lab = Lab::new();
    let r = lab.attack(&format!("uses: {}", lab.wat("grow-table")), &[]);
    r.assert_contained("step `attack` tried to grow a table past 1000000 elements, the limit");
}

#[test]
fn attack_endless_recursion() {
    let lab = Lab::new();
    let r = lab.attack(&format!("uses: {}", lab.guest("recurse")), &[]);
    r.assert_contained("step `attack` overflowed its call stack (deep or endless recursion)");
}

#[test]
fn attack_more_linear_memories_than_allowed() {
    let lab = Lab::new();
    let r = lab.attack(&format!("uses: {}", lab.wat("two-memories")), &[]);
    r.assert_contained(
        "plugin `two-memories.wasm` needs more than a step may have: it defines 3 linear memories, and the limit is 1",
    );
    assert_eq!(r.step("attack")["attempts"], 0, "refused before it started");
}

#[test]
fn attack_more_linear_memories_than_allowed_with_fuel_metering() {
    // The engine with fuel allocates memories one by one instead of from
    // a pool; it holds plugins to the same limits.
    let lab = Lab::new();
    let r = lab.attack(&format!("uses: {}\nlimits: {{ fuel: 1000000 }}", lab.wat("two-memories")), &[]);
    r.assert_contained(
        "plugin `two-memories.wasm` needs more than a step may have: it defines 3 linear memories, and the limit is 1",
    );
    assert_eq!(r.step("attack")["attempts"], 0, "refused before it started");
}
