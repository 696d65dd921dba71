//! What the hostile command programs share: a record of their attempts.
//!
//! Every attempt is printed on its own line, `refused: WHAT: WHY` or
//! `ESCAPED: WHAT: WHAT IT GOT`. A guest whose attempts were all refused
//! gives up with exit status 1; one that got anything out exits 0, so its
//! step succeeds and the test that expected a refusal fails loudly.

use std::fmt::{Debug, Display};

/// The attempts of one guest.
#[derive(Default)]
pub struct Attempts {
    escaped: usize,
}

impl Attempts {
    /// Records one attempt and its result.
    pub fn check<T: Debug, E: Display>(&mut self, what: &str, result: Result<T, E>) {
        match result {
            Ok(got) => {
                self.escaped += 1;
                let shown = format!("{got:?}");
                println!("ESCAPED: {what}: {}", shown.chars().take(200).collect::<String>());
            }
            Err(e) => println!("refused: {what}: {e}"),
        }
    }

    /// Exits: 0 if anything escaped, 1 if everything was refused.
    pub fn finish(self) -> ! {
        if self.escaped > 0 {
            println!("{} attempt(s) escaped the sandbox", self.escaped);
            std::process::exit(0);
        }
        println!("every attempt was refused");
        std::process::exit(1);
    }
}
