//! Attacks on the environment: the guest sees what the step declared and
//! nothing of the engine's own environment.

use crate::lab::Lab;

#[test]
fn attack_read_secrets_from_the_environment() {
    let lab = Lab::new();
    let r = lab.attack(
        &format!(
            "uses: {}\nargs: [DECLARED, RUN]\nenv: {{ DECLARED: visible, RUN: '${{{{ run.id }}}}' }}",
            lab.guest("env-secrets")
        ),
        &[],
    );
    r.assert_contained("step `attack` exited with status 1");
    let log = r.log();
    let run = r.show["run"]["id"].as_str().expect("run id");
    let mut seen: Vec<&str> = log.lines().filter(|l| l.starts_with("declared: ")).collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            "declared: DECLARED=visible",
            "declared: PWD=/workspace",
            &format!("declared: RUN={run}"),
            "declared: SOURCE_DATE_EPOCH=946684800",
            "declared: TMPDIR=/tmp"
        ]
    );
    assert!(!log.contains("ESCAPED"), "{log}");
}
