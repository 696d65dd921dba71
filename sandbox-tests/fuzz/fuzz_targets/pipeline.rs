//! Pipeline files: any text either loads or yields diagnostics that point
//! inside it, and never panics. A pipeline that loads has a DAG.

#![no_main]

use airlock_model::{Dag, NoLookup, load};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|src: &str| {
    match load("fuzz.yaml", src, &NoLookup) {
        Ok(pipeline) => {
            let dag = Dag::new(&pipeline);
            assert_eq!(dag.len(), pipeline.steps.len());
        }
        Err(diagnostics) => {
            assert!(!diagnostics.is_empty(), "a refused pipeline says why");
            for d in diagnostics {
                if let Some(span) = d.span {
                    assert!(span.start <= span.end && span.end <= src.len(), "span {span:?} outside the file");
                }
            }
        }
    }
});
